"""``users.csv`` never imports silently wrong: columns, row widths, delimiters, encodings,
phone numbers and identities shared by several users."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from orchestrator.audience.phones import default_region, region_of_timezone, to_e164
from orchestrator.cli import app as cli
from orchestrator.config import Settings
from orchestrator.engine.importer import REQUIRED, import_users
from orchestrator.errors import ConfigError, InputError
from orchestrator.store.models import User
from tests.engine.conftest import T0

USERS = User.__table__  # type: ignore[attr-defined]
HEADER = ",".join(REQUIRED)


def write(tmp_path: Path, text: str, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def stored(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {r["user_id"]: dict(r) for r in conn.execute(select(USERS)).mappings()}


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(USERS)).scalar_one())


@pytest.mark.parametrize("missing", ["timezone", "phone", "wechat_followed"])
def test_a_header_without_a_required_column_imports_nothing(
    sqlite_engine: Engine, tmp_path: Path, missing: str
) -> None:
    columns = [c for c in REQUIRED if c != missing]
    path = write(tmp_path, ",".join(columns) + "\n" + ",".join(["u1"] + [""] * 8) + "\n")
    with pytest.raises(InputError, match=rf"users.csv:1: the header lacks the required "
                                         rf"column {missing};"):
        import_users(sqlite_engine, path, now=T0)
    assert count(sqlite_engine) == 0


def test_short_and_long_rows_are_reported_by_line(sqlite_engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ",nickname\n"
                 "u1,o1,,,,,Asia/Shanghai,false,true,小明\n"
                 "u2,o2,,,,\n"
                 "\n"
                 "u3,o3,,,,,,false,true,a,b\n"
                 '"u4","o4","","","","","","false","true","multi\nline"\n'
                 "u5,o5,,,,,,false,true,\n")
    report = import_users(sqlite_engine, path, now=T0)
    assert report.errors == [
        (3, "6 fields where the header has 10: a short row (an empty value still needs its "
            "delimiter)"),
        (5, "11 fields where the header has 10: quote values that contain ','"),
    ]
    assert sorted(stored(sqlite_engine)) == ["u1", "u4", "u5"]
    assert stored(sqlite_engine)["u4"]["attributes"] == {"nickname": "multi\nline"}


@pytest.mark.parametrize(("delimiter", "shown"), [(";", "';'"), ("\t", "tab")])
def test_a_semicolon_or_tab_file_is_read_with_its_delimiter_and_says_so(
    sqlite_engine: Engine, tmp_path: Path, delimiter: str, shown: str
) -> None:
    rows = [REQUIRED, ["u1", "o1", "", "", "", "13800138000", "", "0", "1"]]
    path = write(tmp_path, "\n".join(delimiter.join(r) for r in rows) + "\n")
    report = import_users(sqlite_engine, path, now=T0)
    assert (report.imported, report.errors) == (1, [])
    assert report.notes == [f"{path}: read as {shown}-separated (the header uses {shown}, "
                            "not commas)"]
    assert stored(sqlite_engine)["u1"]["phone"] == "+8613800138000"


def test_a_file_with_no_user_id_column_says_what_it_read(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path, "id;openid\n1;o1\n")
    with pytest.raises(InputError, match=r"users.csv:1: the header has no user_id column "
                                         r"\(read 'id;openid'\)"):
        import_users(sqlite_engine, path, now=T0)


def test_a_file_that_is_not_utf8_imports_nothing(sqlite_engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes((HEADER + "\nu1,o1,,,,,,false,true\nu2,o2,,,,,,false,true,\n").encode()
                     + "u3,小明,,,,,,false,true\n".encode("gbk"))
    with pytest.raises(InputError, match=r"users.csv:4: the file is not UTF-8"):
        import_users(sqlite_engine, path, now=T0)
    assert count(sqlite_engine) == 0


def test_a_multibyte_character_cut_off_at_the_end_is_refused(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    path.write_bytes((HEADER + "\nu1,o1,,,,,,false,true\n").encode() + "小".encode()[:2])
    with pytest.raises(InputError, match=r"users.csv:3: the file is not UTF-8"):
        import_users(sqlite_engine, path, now=T0)
    assert count(sqlite_engine) == 0


def test_phones_are_stored_in_e164_and_bad_ones_rejected_by_line(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    lines = [HEADER]
    phones = ["138-0013-8000", "+86 139 0000 0001", "008613900000002", "12345",
              "138-1234-567", "+1 415 555 0100", "not a phone"]
    for i, phone in enumerate(phones):
        lines.append(f"u{i},o{i},,,,{phone},,false,true")
    report = import_users(sqlite_engine, write(tmp_path, "\n".join(lines) + "\n"), now=T0)
    assert [line for line, _ in report.errors] == [5, 6, 8]
    assert report.errors[0][1].startswith("phone: '12345' is not a valid number in CN")
    assert report.errors[2][1].startswith("phone: 'not a phone' is not a phone number")
    assert {u: r["phone"] for u, r in stored(sqlite_engine).items()} == {
        "u0": "+8613800138000", "u1": "+8613900000001", "u2": "+8613900000002",
        "u5": "+14155550100"}


def test_national_numbers_are_read_in_the_configured_region(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path, HEADER + "\nu1,o1,,,,(415) 555-0100,,false,true\n")
    assert import_users(sqlite_engine, path, now=T0, region="US").errors == []
    assert stored(sqlite_engine)["u1"]["phone"] == "+14155550100"


def test_the_default_region_comes_from_the_setting_or_the_time_zone(tmp_path: Path) -> None:
    assert region_of_timezone("Asia/Shanghai") == "CN"
    assert default_region(Settings(_env_file=None, journeys_dir=tmp_path)) == "CN"
    assert default_region(Settings(_env_file=None, journeys_dir=tmp_path,
                                   timezone="Europe/London")) == "GB"
    assert default_region(Settings(_env_file=None, phone_region="us"), "Asia/Shanghai") == "US"
    assert default_region(Settings(_env_file=None), "Asia/Tokyo") == "JP"
    with pytest.raises(ConfigError, match="RECALL_PHONE_REGION"):
        default_region(Settings(_env_file=None, phone_region="XX"))
    assert to_e164("13800138000", "CN") == "+8613800138000"


def test_identities_shared_by_several_users_are_reported(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    first = write(tmp_path, HEADER + "\nu1,o-shared,un1,wm1,s1,13800138000,,false,true\n",
                  "first.csv")
    assert import_users(sqlite_engine, first, now=T0).errors == []
    second = write(tmp_path, "\n".join([
        HEADER,
        "u1,o-shared,un1,wm1,s1,+8613800138000,,false,true",  # the same person again: fine
        "u2,o-shared,,,,,,false,true",  # OpenID of u1 (in the database)
        "u3,o3,un1,,,,,false,true",  # UnionID of u1
        "u4,o4,,,,13900000004,,false,true",
        "u5,o5,,,,139 0000 0004,,false,true",  # phone of u4 (earlier in this file)
        "u6,o6,,wm1,,,,false,true",  # external_userid of u1
    ]) + "\n", "second.csv")
    report = import_users(sqlite_engine, second, now=T0)
    assert report.errors == [
        (3, "openid 'o-shared' already belongs to user 'u1'; one identity, one user: merge the "
            "two rows or correct one"),
        (4, "unionid 'un1' already belongs to user 'u1'; one identity, one user: merge the "
            "two rows or correct one"),
        (6, "phone '+8613900000004' already belongs to user 'u4' (line 5); one identity, one "
            "user: merge the two rows or correct one"),
        (7, "external_userid 'wm1' already belongs to user 'u1'; one identity, one user: "
            "merge the two rows or correct one"),
    ]
    assert sorted(stored(sqlite_engine)) == ["u1", "u4"]


def test_recall_import_prints_file_line_problems_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.config import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(tmp_path / "journeys"))
    monkeypatch.delenv("RECALL_DATABASE_URL", raising=False)
    path = write(tmp_path, HEADER.replace(",", ";") + "\nu1;o1;;;;12345;;false;true\n"
                 "u2;o2;;;;13800138000;;false;true\n")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["import", "users", str(path)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert f"note: {path}: read as ';'-separated" in result.output
    assert f"{path}:2: phone: '12345' is not a valid number in CN" in result.output
    assert "1 users imported" in result.output
