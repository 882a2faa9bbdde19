"""DICOM for UniMed: image series in and out (:mod:`unimed.dicom.series`), and DICOM SEG written
from and read into label maps (:mod:`unimed.dicom.seg`). Plain functions; the PACS datastore is
the app's (``apps/unimed/lib/datastore/dicomweb.py``) and the test PACS is :mod:`servers.orthanc`."""
