"""DataModules that read webdataset shards and inject deterministic label or caption noise."""

from datamodules.classification import ClassificationDataModule
from datamodules.image_text import ImageTextDataModule

__all__ = ["ClassificationDataModule", "ImageTextDataModule"]
