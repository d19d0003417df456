"""Phone numbers in one spelling: E.164 (``+8613800138000``), parsed and checked with the
``phonenumbers`` library (Google's libphonenumber metadata).

A number written without its country (``138 0013 8000``) is read in the *default region*:
``RECALL_PHONE_REGION`` (an ISO 3166 code such as ``CN``) when set, else the country of
the policy's time zone (``timezone:`` in ``journeys/policy.yaml``, else ``RECALL_TIMEZONE``),
looked up in the system's time-zone table (``zone.tab``). ``Asia/Shanghai`` gives ``CN``.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache
from pathlib import Path

import phonenumbers

from orchestrator.config import Settings
from orchestrator.errors import ConfigError


def to_e164(raw: str, region: str) -> str:
    """``raw`` as E.164; ``ValueError`` saying why when it is not a valid phone number."""
    text = raw.strip()
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"phone: {raw!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        raise ValueError(
            f"phone: {raw!r} is not a valid number in {where} (read with default region "
            f"{region}); write it in full, e.g. +8613800138000"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=64)
def region_of_timezone(name: str) -> str | None:
    """The country whose time zone ``name`` is (``zone.tab``), or ``None`` when unknown."""
    for root in zoneinfo.TZPATH:
        table = Path(root) / "zone.tab"
        if not table.is_file():
            continue
        for line in table.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and not line.startswith("#") and fields[2] == name:
                return fields[0]
    return None


def default_region(settings: Settings, policy_timezone: str | None = None) -> str:
    """The region national numbers are read in (see the module docstring)."""
    if settings.phone_region:
        region = settings.phone_region.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"RECALL_PHONE_REGION={settings.phone_region!r} is not a region "
                              "code phonenumbers knows; use an ISO 3166 code such as CN")
        return region
    zone = policy_timezone or settings.timezone
    found = region_of_timezone(zone)
    if found is None or found not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"cannot tell which country time zone {zone!r} is in (no zone.tab "
                          "entry); set RECALL_PHONE_REGION, e.g. CN")
    return found


def policy_timezone(settings: Settings) -> str | None:
    """``timezone:`` of ``journeys/policy.yaml`` when the file sets one and loads."""
    from orchestrator.errors import JourneyError
    from orchestrator.journeys.loader import load_policy

    path = settings.journeys_dir / "policy.yaml"
    if not path.is_file():
        return None
    try:
        policy = load_policy(path)
    except JourneyError:
        return None  # `recall validate` reports it; the import falls back to the setting
    return policy.timezone if "timezone" in policy.model_fields_set else None
