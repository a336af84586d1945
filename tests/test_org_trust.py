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
