"""Getting frames into the pipeline and events out of it, over Kafka.

- :mod:`reidstream.ingest.wire`: the versioned wire format (frames, match events, tracks).
- :mod:`reidstream.ingest.kafka_io`: clients that survive a broker going away, the frame
  source with bad-input classification, and at-least-once offset bookkeeping.
- :mod:`reidstream.ingest.broker`: the embedded Tansu broker for local use and tests.
- :mod:`reidstream.ingest.publisher`: video, RTSP and image folders to the frames topic.

Nothing is imported here so ``reidstream --help`` does not pay for cv2 or kafka.
"""
