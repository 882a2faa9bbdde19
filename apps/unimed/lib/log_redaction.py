"""Keep patient identifiers out of the server's log (and so out of ``GET /logs``).

MONAI Label logs a saved label's info at INFO, and in PACS mode that info carries the patient's
ID and the study UID (``Saving Label ...; Info: {... 'PatientID': ...}``); the PACS's answer to a
SEG upload names the study in its URL. :class:`PatientIdentifierFilter` rewrites such a record's
message before any handler writes it: the values of identifying DICOM attributes, by keyword or
by tag in DICOM JSON or in pydicom's text of an element, and a study UID after "study" (as in
``/studies/{uid}`` URLs) become ``<redacted>``.
:func:`install_log_redaction` puts it on every handler of the process.
"""

from __future__ import annotations

import logging
import re

from lib.safe_text import add_to_every_handler

__all__ = ["PatientIdentifierFilter", "install_log_redaction", "redact"]

#: DICOM keywords whose values identify a patient or a study, and their tags (DICOM JSON keys)
IDENTIFYING = {
    "PatientID": "00100020", "PatientName": "00100010", "PatientBirthDate": "00100030",
    "OtherPatientIDs": "00101000", "PatientAddress": "00101040", "StudyInstanceUID": "0020000D",
    "AccessionNumber": "00080050", "StudyID": "00200010", "ReferringPhysicianName": "00080090",
    "InstitutionName": "00080080",
}
_KEYWORD_VALUE = re.compile(
    r"""(?P<key>(?P<q>['"]?)(?:%s)(?P=q)\s*[:=]\s*)"""
    r"""(?P<value>'[^']*'|"[^"]*"|\[[^\]]*\]|\{(?:[^{}]|\{[^{}]*\})*\}|[^\s,;}\]]+)""" % "|".join(IDENTIFYING))
_TAG_VALUE = re.compile(
    r"""(?P<key>(?P<q>['"])(?:%s)(?P=q)\s*:\s*)(?P<value>\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\})"""
    % "|".join(IDENTIFYING.values()), re.IGNORECASE)
#: a study UID after "study"/"studies": a DICOMweb URL (``/studies/{uid}``), dicomweb-client's
#: ``of study "{uid}"``
_STUDY_UID = re.compile(r"""(?i)(\bstud(?:y|ies)["']?\s*[/:= ]\s*["']?)[0-9]+(?:\.[0-9]+)+""")
#: pydicom's text of an element: ``(0010, 0020) Patient ID    LO: 'PAT-7'``
_ELEMENT = re.compile(r"(\((?:%s)\)[^:\n]*:\s?)[^\n]*" % "|".join(
    f"{t[:4]}, ?{t[4:]}" for t in IDENTIFYING.values()), re.IGNORECASE)
REDACTED = "<redacted>"


def redact(message: str) -> str:
    """``message`` without the values of identifying DICOM attributes.

    Example:
        >>> redact("Info: {'PatientID': 'PAT-7', 'Modality': 'SEG', 'StudyInstanceUID': '1.2.3'}")
        "Info: {'PatientID': '<redacted>', 'Modality': 'SEG', 'StudyInstanceUID': '<redacted>'}"
        >>> redact("stored at http://pacs/dicom-web/studies/1.2.3/series/4.5")
        'stored at http://pacs/dicom-web/studies/<redacted>/series/4.5'
        >>> redact('retrieve series "4.5" of study "1.2.3"')
        'retrieve series "4.5" of study "<redacted>"'
        >>> redact("(0010, 0020) Patient ID                          LO: 'PAT-7'")
        '(0010, 0020) Patient ID                          LO: <redacted>'
    """
    message = _KEYWORD_VALUE.sub(lambda m: m["key"] + _quoted(m["value"]), message)
    message = _TAG_VALUE.sub(lambda m: m["key"] + _quoted(m["value"]), message)
    message = _ELEMENT.sub(r"\g<1>" + REDACTED, message)
    return _STUDY_UID.sub(r"\g<1>" + REDACTED, message)


def _quoted(value: str) -> str:
    return f"{value[0]}{REDACTED}{value[0]}" if value[:1] in ("'", '"') else f"'{REDACTED}'"


class PatientIdentifierFilter(logging.Filter):
    """A handler filter that redacts identifying values in each record's message (see :func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction() -> int:
    """Put one :class:`PatientIdentifierFilter` on every handler of every logger of this process
    (those set up later are not covered: call it again after).

    Returns:
        the number of handlers it was added to now.
    """
    return add_to_every_handler(PatientIdentifierFilter)
