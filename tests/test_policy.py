"""Policy validation: shipped policies load, errors name their YAML path, the schema is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.cli import main
from router.routing.policy import PolicyError, json_schema, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "policies").glob("*.yaml"))


def default_doc() -> dict[str, object]:
    return yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_policy_loads(path: Path) -> None:
    policy, version = load_policy(path)
    assert policy.tiers and policy.aliases
    assert len(version) == 12


def test_embedded_default_is_the_policies_default() -> None:
    embedded = (ROOT / "router" / "data" / "default.yaml").read_text()
    assert embedded == (ROOT / "policies" / "default.yaml").read_text()
    assert load_policy(None)[1] == load_policy(ROOT / "policies" / "default.yaml")[1]


def test_committed_json_schema_is_current() -> None:
    assert (ROOT / "policies" / "policy.schema.json").read_text() == json_schema()


def test_default_policy_names_three_tiers_with_explicit_thinking() -> None:
    policy, _ = load_policy(None)
    assert list(policy.tiers) == ["flash", "pro", "pro-max"]
    assert policy.tiers["flash"].thinking == "disabled"
    assert policy.tiers["pro"].reasoning_effort == "high"
    assert policy.tiers["pro-max"].reasoning_effort == "max"
    assert policy.tiers["pro-max"].latency.tokens_per_s == 35


def mutate(path: str, value: object) -> dict[str, object]:
    doc = default_doc()
    node: object = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]  # type: ignore[index]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        del node[last]  # type: ignore[attr-defined]
    else:
        node[last] = value  # type: ignore[index]
    return doc


BAD = [
    ("aliases.auto.default_tier", "ultra", "aliases.auto.default_tier: unknown tier 'ultra'"),
    (
        "aliases.auto.shares",
        {"pro": 0.1, "pro-max": 0.3},
        "aliases.auto.shares: values must descend",
    ),
    ("aliases.auto.shares", {"turbo": 0.1}, "aliases.auto.shares.turbo: unknown tier 'turbo'"),
    ("rules.1.then", {"max_tier": "mega"}, "rules[1].then.max_tier: unknown tier 'mega'"),
    ("rules.1.then", {"min_tier": "pro-max", "max_tier": "flash"}, "rules[1].then: min_tier"),
    ("rules.1.then", {"tier": "pro", "max_tier": "pro"}, "rules[1].then: give either"),
    ("rules.1.when", {}, "rules[1].when: a rule's 'when' needs at least one condition"),
    (
        "rules.1.when",
        {"prompt_has": "x"},
        "rules[1].when.prompt_has: unknown key (known keys: model, tools,",
    ),
    (
        "tiers.flash.thinking",
        "sometimes",
        "tiers.flash.thinking: Input should be 'enabled' or 'disabled'",
    ),
    (
        "tiers.flash.reasoning_effort",
        "max",
        "tiers.flash: reasoning_effort is set but thinking is disabled",
    ),
    (
        "tiers.pro.prices.input_usd_per_mtok",
        -1,
        "tiers.pro.prices.input_usd_per_mtok: Input should be greater",
    ),
    ("tiers.pro.latency", None, "tiers.pro.latency: Field required"),
    ("version", 2, "version: Input should be 1"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD]
)
def test_invalid_policy_names_the_path(path: str, value: object, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(yaml.safe_dump(mutate(path, value)))
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_alias_may_not_shadow_a_tier() -> None:
    doc = default_doc()
    doc["aliases"]["pro"] = {"default_tier": "flash", "thresholds": {"pro": 0.5}}  # type: ignore[index]
    with pytest.raises(PolicyError, match=r"aliases\.pro: clashes"):
        parse_policy(yaml.safe_dump(doc))


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("tiers: [unclosed")


def test_policy_check_command_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ROOT / "policies" / "default.yaml"
    assert main(["policy", "check", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate("aliases.auto.default_tier", "ultra")))
    assert main(["policy", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "aliases.auto.default_tier: unknown tier 'ultra'" in err
    assert main(["policy", "check", str(tmp_path / "missing.yaml")]) == 1
