"""Child processes the project starts and stops: the MONAI Label server with the UniMed app, and an Orthanc PACS."""
