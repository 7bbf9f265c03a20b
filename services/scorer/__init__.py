"""The scorer service: FeatureVectors in, Predictions out, with signed ONNX models.

Rooms: ``processor.py`` (pure core: routes, fallbacks, breaker, shadow, canary),
``artifact.py`` (signed version directories), ``model.py`` (onnxruntime sessions),
``registry.py`` (verify + load), ``control.py``/``follower.py`` (``model.control``, hot
reload), ``settings.py``, ``cli.py`` (operator commands), ``training.py`` (demo models).
"""
