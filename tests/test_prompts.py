from __future__ import annotations

from collections import Counter

import pytest

from fleet.prompts import (PoolEntry, Prompt, PromptPicker, available_sets, load_prompt_set, render_params,
                           template_problems)
from fleet.errors import PromptSetError


@pytest.fixture(scope="module")
def sets():
    found = available_sets()
    return {name: load_prompt_set(path) for name, path in found.items()}


def test_bootstrap_is_broad(sets):
    boot = sets["bootstrap"]
    counts = Counter(p.category for p in boot.prompts)
    assert len(boot.prompts) >= 60
    assert len(counts) >= 6 and min(counts.values()) >= 5
    assert {"portraits", "landscapes", "cartoon", "art-styles", "objects", "lighting-weather"} <= set(counts)
    assert len({p.text for p in boot.prompts}) == len(boot.prompts)


def test_stress_covers_every_edge_case(sets):
    stress = {p.id: p for p in sets["stress"].prompts}
    cats = {p.category for p in stress.values()}
    assert {"empty", "whitespace", "long", "unicode", "control", "injection", "repeated"} <= cats
    texts = [p.text for p in stress.values()]
    assert "" in texts
    assert any(t and not t.strip() for t in texts)  # whitespace only
    assert any(len(t.encode()) > 2048 for t in texts)
    assert any(any(ord(c) > 0xFFFF for c in t) for t in texts)  # emoji (astral plane)
    assert any(any("\u0590" <= c <= "\u06ff" for c in t) for t in texts)  # hebrew / arabic (RTL)
    assert any(any(ord(c) < 0x20 and c not in "\t\n\r" for c in t) for t in texts)  # control chars
    assert "\x00" in stress["control-chars"].text


def test_prompt_set_errors_are_located(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nprompts:\n  - {id: a, text: x, category: c}\n  - {id: a, text: y, category: c}\n")
    with pytest.raises(PromptSetError) as info:
        load_prompt_set(bad)
    assert str(info.value) == f"{bad}:1:1: prompt id 'a' appears more than once (ids must be unique in a set)"


def _pool(n_a: int, n_b: int, w_a: float = 1.0, w_b: float = 1.0) -> list[PoolEntry]:
    pool = [PoolEntry("a", w_a, Prompt(id=f"a{i}", text=f"a {i}", category="x")) for i in range(n_a)]
    return pool + [PoolEntry("b", w_b, Prompt(id=f"b{i}", text=f"b {i}", category="y")) for i in range(n_b)]


def test_round_robin_cycles_in_order():
    picker = PromptPicker(_pool(2, 1), "round_robin", seed=1)
    assert [picker.next().prompt.id for _ in range(5)] == ["a0", "a1", "b0", "a0", "a1"]


def test_random_is_seeded():
    def draws(seed: int) -> list[str]:
        picker = PromptPicker(_pool(5, 5), "random", seed)
        return [picker.next().prompt.id for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_weighted_follows_set_weights():
    picker = PromptPicker(_pool(10, 10, w_a=3, w_b=1), "weighted", seed=3)
    draws = Counter(picker.next().set_name for _ in range(4000))
    assert 0.70 < draws["a"] / 4000 < 0.80  # expected 0.75


def test_avoid_never_repeats_a_prompt_back_to_back():
    picker = PromptPicker(_pool(2, 0), "random", seed=5)
    last = None
    for _ in range(200):
        cur = picker.next(avoid=last).prompt.id
        assert cur != last
        last = cur


def test_render_params_fills_placeholders_and_applies_overrides():
    prompt = Prompt(id="p1", text='a "quoted" $ prompt', category="c", negative_prompt="blur",
                    params={"guidance_scale": 1.5})
    out = render_params({"prompt": "${prompt}", "negative_prompt": "${negative_prompt}", "seed": "${seed}",
                         "tag": "${category}/${prompt_id}", "nested": [{"p": "${prompt}!"}], "guidance_scale": 1.0},
                        prompt, seed=42)
    assert out == {"prompt": 'a "quoted" $ prompt', "negative_prompt": "blur", "seed": 42, "tag": "c/p1",
                   "nested": [{"p": 'a "quoted" $ prompt!'}], "guidance_scale": 1.5}


def test_template_problems():
    assert template_problems({"prompt": "${prompt}"}) == []
    assert template_problems({"x": "${nope}"})[0].startswith("unknown placeholder ${nope}")
    assert template_problems({"prompt": "${prompt} $"})[0].endswith("has a malformed placeholder "
                                                                   "(write ${name}, and $$ for a literal $)")
