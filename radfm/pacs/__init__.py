"""PACS plumbing: DICOMweb pull / push (``radfm pacs``, ``radfm serve --dicomweb-url``)."""

from radfm.pacs.dicomweb import TOKEN_ENV, PacsClient, PullResult, PushResult, SeriesInfo

__all__ = ["TOKEN_ENV", "PacsClient", "PullResult", "PushResult", "SeriesInfo"]
