"""Running the pipeline on a Ray cluster: ``reidstream deploy`` (:mod:`.cli`), the pipeline as
a Ray job (:mod:`.jobs`) and its Kafka topics sized for it (:mod:`.topics`)."""
