"""VLAPolicy: the contract used by training, evaluation and serving."""

import json

import pytest
import torch

from tests.policy_fixtures import D, H, make_batch, make_policy
from vla_ebt.policy import VLAPolicy
from vla_ebt.schema import SchemaError


@pytest.fixture(scope="module")
def policy() -> VLAPolicy:
    return make_policy()


def test_predict_chunk_returns_unnormalized_actions_and_diagnostics(policy: VLAPolicy) -> None:
    out = policy.predict_chunk(make_batch())
    assert out.actions.shape == (4, H, D)
    assert out.energy.shape == (4,) and out.grad_norm.shape == (4,) and out.steps.shape == (4,)
    assert out.nfe == policy.cfg.ebt.infer_steps and out.latency_ms >= out.head_ms > 0  # energy from the last step
    # embodiment 1 has 3 action dims: the padded 4th comes out as exactly 0
    assert (out.actions[1::2, :, 3] == 0).all()
    # and its actions stay inside that dataset's [q01, q99] range (quantile normalization clips)
    assert out.actions[1::2, :, :3].min() >= -1e-6 and out.actions[1::2, :, :3].max() <= 1 + 1e-6


def test_compute_loss_trains_head_and_lora_but_not_backbone_base(policy: VLAPolicy) -> None:
    base = {n: p.detach().clone() for n, p in policy.encoder.backbone.named_parameters() if not p.requires_grad}
    assert base, "the pretrained backbone weights must be frozen under LoRA"
    lora = [n for n, p in policy.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch()
    losses = []
    for _ in range(5):
        loss, info = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    grads = dict(policy.named_parameters())
    assert any(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in lora)
    for n, p in policy.encoder.backbone.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_loss_ignores_steps_past_episode_end_and_padded_dims() -> None:
    pol = make_policy(head="regression")
    batch = make_batch()
    batch["action_mask"][:, 5:] = False
    other = {**batch, "action": batch["action"].clone()}
    other["action"][:, 5:] = 3.0
    other["action"][1::2, :, 3] = -7.0  # embodiment 1's padded action dim
    torch.manual_seed(0)
    l1, _ = pol.compute_loss(batch)
    torch.manual_seed(0)
    l2, _ = pol.compute_loss(other)
    torch.testing.assert_close(l1, l2)


def test_save_load_round_trip_gives_identical_predictions(policy: VLAPolicy, tmp_path) -> None:
    policy.save_pretrained(tmp_path / "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == ["adapter_model.safetensors", "config.json", "model.safetensors", "normalizer.json"]
    loaded = VLAPolicy.from_pretrained(tmp_path / "p")
    batch = make_batch(seed=3)
    torch.manual_seed(1)
    a = policy.predict_chunk(batch)
    torch.manual_seed(1)
    b = loaded.predict_chunk(batch)
    torch.testing.assert_close(a.actions, b.actions, atol=0, rtol=0)
    torch.testing.assert_close(a.energy, b.energy, atol=0, rtol=0)


def test_merged_adapter_saves_full_weights_and_predicts_the_same(tmp_path) -> None:
    pol = make_policy()
    with torch.no_grad():  # give the adapters non-zero weights so merging changes base weights
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = make_batch(seed=5)
    torch.manual_seed(2)
    before = pol.predict_chunk(batch).actions
    pol.save_pretrained(tmp_path / "m", merge_adapter=True)
    assert not (tmp_path / "m" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["finetune"]["mode"] == "full"
    loaded = VLAPolicy.from_pretrained(tmp_path / "m")
    torch.manual_seed(2)
    after = loaded.predict_chunk(batch).actions
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_select_action_drains_the_queue_then_replans(policy: VLAPolicy) -> None:
    obs = {k: v[:2] if k != "instruction" else v[:2] for k, v in make_batch().items()}
    policy.reset()
    calls = []
    orig = policy.predict_chunk

    def counting(*a, **kw):
        calls.append(kw.get("warm_start"))
        return orig(*a, **kw)

    policy.predict_chunk = counting  # type: ignore[method-assign]
    try:
        acts = [policy.select_action(obs) for _ in range(7)]
    finally:
        del policy.predict_chunk
    assert len(calls) == 3  # n_action_steps = 3: steps 0, 3, 6 plan a chunk
    assert calls[0] is None and calls[1] is not None and calls[1].shape == (2, H, D)
    assert all(a.shape == (2, D) for a in acts)


def test_temporal_ensembling_replans_every_step() -> None:
    pol = make_policy(head="regression")
    pol.cfg.execution.mode = "ensemble"
    obs = make_batch(2)
    pol.reset()
    first = pol.select_action(obs)
    torch.testing.assert_close(first, pol.last_output.actions[:, 0])
    second = pol.select_action(obs)
    # regression is deterministic: the average of chunk0[1] and chunk1[0] with decayed weights
    assert second.shape == (2, D) and pol.rollout_state()["t"] == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop("state"), "missing key 'state'"),
        (lambda b: b.__setitem__("images", torch.rand(4, 3, 64, 64)), "'images' expected shape"),
        (lambda b: b["action"].__setitem__((0, 0, 0), float("nan")), "'action' contains NaN"),
        (lambda b: b.__setitem__("instruction", ["", "a", "b", "c"]), "empty string"),
        (lambda b: b.__setitem__("embodiment", torch.tensor([0, 1, 2, 0])), "'embodiment' ids must be in [0, 2)"),
    ],
)
def test_bad_batches_raise_clear_errors(policy: VLAPolicy, mutate, message: str) -> None:
    batch = make_batch()
    mutate(batch)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        policy.compute_loss(batch)


def test_from_pretrained_names_the_missing_file(policy: VLAPolicy, tmp_path) -> None:
    d = policy.save_pretrained(tmp_path / "x")
    (d / "normalizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="normalizer.json"):
        VLAPolicy.from_pretrained(d)


def test_config_with_unknown_field_is_rejected(policy: VLAPolicy, tmp_path) -> None:
    d = policy.save_pretrained(tmp_path / "y")
    cfg = json.loads((d / "config.json").read_text())
    cfg["trunk"]["widht"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json.*trunk.*unknown field\(s\) \['widht'\]"):
        VLAPolicy.from_pretrained(d)
