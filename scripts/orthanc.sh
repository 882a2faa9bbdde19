#!/usr/bin/env bash
# A local Orthanc PACS with DICOMweb on 127.0.0.1:8042 holding the test studies (a BraTS MR series
# converted by the project, and the shared CT series when ../shared is there). Ctrl-C stops it.
#   bash scripts/orthanc.sh                 then: python main.py serve --studies http://127.0.0.1:8042/dicom-web
# Needs Debian's packages: apt-get install -y orthanc orthanc-dicomweb
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CT=../shared/data/totalseg_examples/example_ct_dicom
if [ -d "$CT" ]; then set -- --ct "$CT" "$@"; fi
exec "$PYTHON" main.py pacs "$@"
