"""DICOM for UniMed: image series in and out (:mod:`unimed.dicom.series`), DICOM SEG written from
and read into label maps (:mod:`unimed.dicom.seg`), and an Orthanc PACS for tests and users
(:mod:`unimed.dicom.orthanc`)."""
