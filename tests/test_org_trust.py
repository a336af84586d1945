"""Trust by organisation (issue 22): `trust add ORG_ID COLLECTION --kind org`.

An org trust entry names an organisation key, not an author: it must never make the org
key itself an accepted author, and it must round-trip through config.toml and the CLI.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from conftest import Cli, HomeFactory, author_key

from hashmesh.node.config import Home

ORG = author_key(90).node_id


def test_trust_add_kind_org_is_written_and_listed(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    out = cli.json("trust", "add", ORG, "csam", "--kind", "org", "--name", "hotline", home=a)
    assert out["kind"] == "org" and out["change"] == "trusted"
    entry = tomllib.loads((a / "config.toml").read_text())["trust"][0]
    assert entry == {"node_id": ORG, "collection": "csam", "name": "hotline", "kind": "org"}
    listed = cli.json("trust", "list", home=a)["trust"]
    assert listed == [{"node_id": ORG, "collection": "csam", "name": "hotline", "kind": "org"}]
    config = Home(a).load_config()
    assert config.trusted_orgs("csam") == {ORG}
    assert config.accepts_collection("csam")
    assert not config.accepts(ORG, "csam")  # the org key is no author


def test_a_node_trust_entry_is_written_as_before(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    cli("trust", "add", ORG, "csam", home=a)
    entry = tomllib.loads((a / "config.toml").read_text())["trust"][0]
    assert "kind" not in entry  # configs of nodes that do not use orgs stay byte for byte


def test_bad_trust_kind_exits_2_naming_the_field(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    bad = cli("trust", "add", ORG, "csam", "--kind", "people", home=a, expect=2)
    assert "--kind" in bad.stderr
    config = a / "config.toml"
    entry = f'[[trust]]\nnode_id = "{ORG}"\ncollection = "csam"\nkind = "people"\n'
    config.write_text(config.read_text().replace("trust = []\n", "") + "\n" + entry)
    broken = cli("trust", "list", home=a, expect=2)
    assert "trust[0].kind: 'people' is not a trust kind" in broken.stderr


def _revocation_bundle(tmp_path: Path, *, tamper: bool = False) -> tuple[Path, list[str]]:
    """A bundle of author X's two batches carrying X's certificate (co-signed by X) and
    the org's revocation of X after seq 1."""
    from conftest import add_ops, chain, md5_values

    from hashmesh.protocol.bundles import encode_bundle_header
    from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.statements import sign_statement

    org, x = author_key(90), author_key(91)
    cert = sign_statement(
        CertBody(ts=1, org=org.node_id, key=x.node_id, not_before=0, not_after=2**40),
        [org, x],
        REGISTRY,
    )
    revoke = sign_statement(
        KeyRevokeBody(ts=2, org=org.node_id, key=x.node_id, collection="*", after=1,
                      reason="key stolen"),
        [org],
        REGISTRY,
    )  # fmt: skip
    values = md5_values(2, salt=7)
    batches = chain(x, "csam", [add_ops([v]) for v in values])
    statements = [cert.to_json(), revoke.to_json()]
    if tamper:
        statements[1] = {**statements[1], "body": statements[0]["body"]}
    path = tmp_path / "x.hmb"
    with open(path, "wb") as fh:
        fh.write(encode_bundle_header({"v": 1, "collection": "csam", "statements": statements}))
        for batch in batches:
            fh.write(batch.to_bytes())
    return path, values


def test_a_bundle_carries_the_revocation_that_refuses_its_later_batch(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    bundle, values = _revocation_bundle(tmp_path)
    cli("trust", "add", author_key(91).node_id, "csam", home=a)
    verified = cli.json("verify", bundle)
    assert verified["statements"] == {"cert": 1, "key-revoke": 1}
    out = cli.json("import", bundle, home=a)
    assert out["applied"] == 1 and out["refused_untrusted"] == 1
    assert "revoked after seq 1" in next(iter(out["refused_keys"].values()))
    assert cli("match", "md5", values[0], home=a, expect=None).returncode == 0
    assert cli("match", "md5", values[1], home=a, expect=None).returncode == 1
    revoked = cli.json("status", home=a)["revoked_keys"]
    assert [(r["after"], r["effective"]) for r in revoked] == [(1, True)]


def test_a_bundle_with_a_bad_statement_changes_nothing(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    bundle, _ = _revocation_bundle(tmp_path, tamper=True)
    cli("trust", "add", author_key(91).node_id, "csam", home=a)
    bad = cli("import", bundle, home=a, expect=2)
    assert "manifest.statements[1]" in bad.stderr
    status = cli.json("status", home=a)
    assert status["batches"] == 0 and status["certificates"] == []
