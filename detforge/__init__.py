"""detforge: object-detection training — D-FINE and CNN detectors, the modern recipe,
honest metrics, export and measured latency."""

__version__ = "0.1.0"

from detforge.records import Detections, Sample  # noqa: E402


def __getattr__(name):  # heavy imports only when asked for
    if name == "Detector":
        from detforge.api import Detector

        return Detector
    if name == "Predictor":
        from detforge.infer.predictor import Predictor

        return Predictor
    raise AttributeError(name)


__all__ = ["Detector", "Predictor", "Detections", "Sample", "__version__"]
