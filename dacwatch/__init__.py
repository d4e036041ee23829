"""dacwatch: a folder that converts audio to Descript Audio Codec codes and back."""

__version__ = "0.1.0"
