#!/usr/bin/env bash
# Debian's Orthanc + its DICOMweb plugin for the PACS round-trip tests (tests/pacs). Best effort:
# without root or apt the tests skip and say why; nothing else depends on it. Idempotent.
set -u
if command -v Orthanc >/dev/null 2>&1 && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_orthanc: not root or no apt-get; the PACS tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb >/dev/null 2>&1; then
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb >/dev/null 2>&1 \
    || echo "setup_orthanc: apt-get install orthanc orthanc-dicomweb failed; the PACS tests will be skipped" >&2
fi
exit 0
