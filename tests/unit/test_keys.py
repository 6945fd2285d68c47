"""Key format, checksum and KeyStore decisions (docs/reference.md#keys and #status-codes)."""

from __future__ import annotations

import json

import pytest

from fluxgw.keys import (
    BASE62,
    KEY_LEN,
    KEY_PATTERN,
    AuthOutcome,
    KeyFormatError,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    check_format,
    display_prefix,
    generate_key,
    hash_key,
    project_tag,
)

PROJECT = "proj_8f2c1a9b7d"
OTHER_PROJECT = "proj_other_5511"


def make_record(key: str, name: str = "ci", **kw) -> KeyRecord:
    return KeyRecord(
        name=name,
        key_hash=hash_key(key),
        display=display_prefix(key),
        environment="test" if key.startswith("flx_test_") else "live",
        created_at=kw.pop("created_at", 1_700_000_000.0),
        **kw,
    )


def auth(store: KeyStore, header: str | None) -> AuthOutcome:
    outcome = store.authenticate(header)
    assert outcome.ok == (outcome.code == "ok")
    return outcome


def test_generated_key_has_documented_shape_and_passes_check():
    key = generate_key(PROJECT)
    assert len(key) == KEY_LEN == 53
    assert KEY_PATTERN.fullmatch(key)
    parsed = check_format(key)
    assert parsed.environment == "live"
    assert parsed.project_tag == project_tag(PROJECT)
    test_key = generate_key(PROJECT, test=True)
    assert test_key.startswith("flx_test_")
    assert check_format(test_key).environment == "test"


def test_keys_are_random_and_tags_differ_between_projects():
    assert len({generate_key(PROJECT) for _ in range(50)}) == 50
    assert project_tag(PROJECT) == project_tag(PROJECT)
    assert project_tag(PROJECT) != project_tag(OTHER_PROJECT)
    assert len(project_tag(PROJECT)) == 6
    assert all(c in BASE62 for c in project_tag(PROJECT))


def test_every_single_character_mutation_is_refused():
    key = generate_key(PROJECT)
    alphabet = BASE62 + "_-!é "
    for i, original in enumerate(key):
        for c in alphabet:
            if c == original:
                continue
            mutated = key[:i] + c + key[i + 1 :]
            with pytest.raises(KeyFormatError):
                check_format(mutated)


def test_adjacent_swaps_are_refused():
    key = generate_key(PROJECT)
    for i in range(9, len(key) - 1):
        if key[i] != key[i + 1]:
            with pytest.raises(KeyFormatError, match="checksum"):
                check_format(key[:i] + key[i + 1] + key[i] + key[i + 2 :])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda k: k[:-1], "wrong length"),
        (lambda k: k + "A", "wrong length"),
        (lambda k: "", "wrong length"),
        (lambda k: "flx_prod_" + k[9:], "must start with"),
        (lambda k: "FLX_LIVE_" + k[9:], "must start with"),
        (lambda k: k[:20] + "+" + k[21:], "characters outside"),
        (lambda k: k[:20] + "٣" + k[21:], "characters outside"),
        (lambda k: k[:-6] + "000000", "checksum"),
    ],
)
def test_check_format_says_what_is_wrong_without_echoing(make, match):
    key = generate_key(PROJECT)
    bad = make(key)
    with pytest.raises(KeyFormatError, match=match) as info:
        check_format(bad)
    assert key[9:] not in str(info.value)
    if bad:
        assert bad not in str(info.value)


def test_hash_and_display_prefix():
    key = generate_key(PROJECT)
    assert hash_key(key) == hash_key(key)
    assert len(hash_key(key)) == 64
    shown = display_prefix(key)
    assert shown.startswith("flx_live_") and shown.endswith("...")
    assert key.startswith(shown[:-3])
    assert len(shown) < len(key) // 2


@pytest.fixture
def keys():
    live = generate_key(PROJECT)
    scoped = generate_key(PROJECT, test=True)
    revoked = generate_key(PROJECT)
    store = KeyStore(
        PROJECT,
        [
            make_record(live, "live"),
            make_record(scoped, "scoped", functions=("get_order",)),
            make_record(revoked, "old", revoked_at=1_700_000_500.0),
        ],
    )
    return store, {"live": live, "scoped": scoped, "revoked": revoked}


def test_authenticate_accepts_bearer_in_any_case_and_spacing(keys):
    store, k = keys
    for header in (f"Bearer {k['live']}", f"bearer {k['live']}", f"BEARER   {k['live']}"):
        outcome = auth(store, header)
        assert (outcome.ok, outcome.status, outcome.code) == (True, 200, "ok")
        assert outcome.record is not None and outcome.record.name == "live"
        assert k["live"] not in outcome.message


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (None, 401, "missing_key"),
        ("", 401, "missing_key"),
        ("   ", 401, "missing_key"),
        ("{live}", 401, "not_bearer"),
        ("Basic {live}", 401, "not_bearer"),
        ("Token {live}", 401, "not_bearer"),
        ("Bearer", 401, "malformed_key"),
        ("Bearer    ", 401, "malformed_key"),
        ("Bearer {live}x", 401, "malformed_key"),
        ("Bearer {typo}", 401, "malformed_key"),
        ("Bearer {other_project}", 403, "wrong_project"),
        ("Bearer {unknown}", 401, "unknown_key"),
        ("Bearer {revoked}", 401, "revoked_key"),
    ],
)
def test_authenticate_refusals(keys, header, status, code):
    store, k = keys
    live = k["live"]
    values = {
        "live": live,
        "typo": live[:15] + ("A" if live[15] != "A" else "B") + live[16:],
        "other_project": generate_key(OTHER_PROJECT),
        "unknown": generate_key(PROJECT),
        "revoked": k["revoked"],
    }
    text = header.format(**values) if header is not None else None
    outcome = auth(store, text)
    assert (outcome.ok, outcome.status, outcome.code) == (False, status, code)
    assert outcome.record is None
    assert outcome.message
    for secret in values.values():
        assert secret[9:] not in outcome.message


def test_authorize_scoped_key(keys):
    store, k = keys
    scoped = auth(store, f"Bearer {k['scoped']}").record
    assert scoped is not None
    assert store.authorize(scoped, "get_order").ok
    refused = store.authorize(scoped, "create_order")
    assert (refused.ok, refused.status, refused.code) == (False, 403, "key_not_for_function")
    assert "create_order" in refused.message
    unscoped = auth(store, f"Bearer {k['live']}").record
    assert store.authorize(unscoped, "anything").ok


def test_store_names_unique_among_active_keys(keys):
    store, _ = keys
    with pytest.raises(KeyStoreError, match="already exists"):
        store.add(make_record(generate_key(PROJECT), "live"))
    # "old" was revoked: its name may be reused.
    reused = store.add(make_record(generate_key(PROJECT), "old"))
    assert store.by_name("old") is reused
    assert len(store) == 4
    assert [r.name for r in store.records].count("old") == 2


def test_revoked_key_is_refused_after_revoke():
    key = generate_key(PROJECT)
    assert KeyStore(PROJECT, [make_record(key, "a")]).authenticate(f"Bearer {key}").ok
    revoked = KeyStore(PROJECT, [make_record(key, "a", revoked_at=5.0)])
    assert revoked.authenticate(f"Bearer {key}").code == "revoked_key"


def test_records_round_trip_json():
    key = generate_key(PROJECT)
    records = [
        make_record(key, "plain"),
        make_record(generate_key(PROJECT), "scoped", functions=("a", "b"), revoked_at=1.5e9),
    ]
    for record in records:
        data = json.loads(json.dumps(record.to_json()))
        assert KeyRecord.from_json(data) == record
    assert key not in json.dumps([r.to_json() for r in records])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("key_hash"), "missing field 'key_hash'"),
        (lambda d: d.update(key_hash="xyz"), "key_hash must be 64"),
        (lambda d: d.update(environment="prod"), "environment must be"),
        (lambda d: d.update(created_at="yesterday"), "created_at must be"),
        (lambda d: d.update(functions="a"), "'functions' must be a list"),
        (lambda d: d.update(functions=[1]), "function names"),
        (lambda d: d.update(revoked_at=True), "revoked_at must be"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(name=""), "name must be"),
    ],
)
def test_from_json_refuses_corrupt_records(change, match):
    data = make_record(generate_key(PROJECT), "ci").to_json()
    change(data)
    with pytest.raises(ValueError, match=match):
        KeyRecord.from_json(data)


def test_from_json_refuses_non_object():
    with pytest.raises(ValueError, match="JSON object"):
        KeyRecord.from_json(["not", "a", "dict"])


def test_a_repeat_caller_gets_the_same_answer_and_a_near_miss_is_still_refused(keys):
    """The store remembers keys it already checked; that must change no answer."""
    store, k = keys
    for _ in range(3):
        outcome = store.authenticate(f"Bearer {k['live']}")
        assert (outcome.ok, outcome.record.name) == (True, "live")
        assert store.authenticate(f"Bearer {k['revoked']}").code == "revoked_key"
    near = k["live"][:-1] + ("A" if k["live"][-1] != "A" else "B")
    assert store.authenticate(f"Bearer {near}").code == "malformed_key"
    stranger = generate_key(PROJECT)
    assert store.authenticate(f"Bearer {stranger}").code == "unknown_key"
