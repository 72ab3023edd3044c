"""Getting frames into the pipeline and events out of it, over Kafka.

- :mod:`reidstream.ingest.wire`: the versioned wire format (frames, match events, tracks).
- :mod:`reidstream.ingest.kafka_clients`: connection settings, raw clients, topic creation.
- :mod:`reidstream.ingest.producer`: a producer that survives a broker going away and waits
  for acknowledgements (commit after produce).
- :mod:`reidstream.ingest.frame_source`: the frames topic for one consumer-group member, with
  bad-input classification (:mod:`.frame_checks`) and at-least-once offsets (:mod:`.offsets`).
- :mod:`reidstream.ingest.backoff`, :mod:`reidstream.ingest.dedup`: retry pacing; event-id dedup.
- :mod:`reidstream.ingest.broker`: the embedded Tansu broker for local use and tests.
- :mod:`reidstream.ingest.publisher`: video, RTSP and image folders to the frames topic.

Nothing is imported here so ``reidstream --help`` does not pay for cv2 or kafka.
"""
