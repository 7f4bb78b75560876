"""The paired forward (zo.paired_calls): L+ and L- from one forward of the doubled batch, bit for bit the
losses of two separate virtual forwards, with each chunk of z drawn once instead of twice."""
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED_DATA, build_tiny_model
from zo.blocks import parameter_blocks
from zo.noise import NoiseSource
from zo.paired_calls import PairingUnsupported
from zo.perturb import TwoPointProbe, VirtualPerturbation


requires_data = pytest.mark.skipif(not (SHARED_DATA / "WSC").is_dir(), reason=f"no benchmark data under {SHARED_DATA}")


def logits_loss(model, ids, mask=None):
    """A causal-LM loss computed outside the model from its logits (what the task losses do)."""
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())


def _both(model, blocks, loss_fn, scales, seed=7, threads=2):
    """((L+, L-, pairing used) of a paired probe, the same of a two-forward probe)."""
    noise = NoiseSource(threads=threads)
    results = []
    with torch.inference_mode():
        for pair in (True, False):
            probe = TwoPointProbe(pair)
            results.append((*probe.losses(model, blocks, noise, seed, scales, loss_fn), probe.paired))
    return tuple(results)


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("by_rows", [False, True], ids=["materialized", "by_rows"])
def test_paired_losses_equal_two_separate_forwards_bit_for_bit(family, dtype, by_rows, monkeypatch):
    if by_rows:  # every matrix perturbed by output rows, as SmolLM2's tied head (the tiny models' are too small)
        import zo.perturb
        monkeypatch.setattr(zo.perturb, "MATERIALIZE_LIMIT", 1000)
    model = build_tiny_model(family, 400, dtype=dtype)
    blocks = parameter_blocks(model)
    ids = torch.randint(3, 400, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in one row
    scales = [1e-2 * (1 + i % 3) for i in range(len(blocks))]
    paired, separate = _both(model, blocks, lambda: logits_loss(model, ids, mask), scales)
    assert paired[2] is True and separate[2] is False
    assert paired[:2] == separate[:2]
    assert paired[0] != paired[1]


@requires_data
@pytest.mark.parametrize("task_name, scoring, pairs", [("WSC", "rows", True), ("WSC", "auto", True),
                                                       ("Copa", "rows", True), ("Copa", "prompt_cache", False)])
def test_task_losses_pair_where_one_forward_gives_them(task_name, scoring, pairs, tiny_tokenizer):
    """Rows and single-token shared prompts are one forward each; the prompt cache's continuation is not."""
    import tasks

    model = build_tiny_model("llama", len(tiny_tokenizer))
    blocks = parameter_blocks(model)
    task = tasks.get_task(task_name, SHARED_DATA)
    examples = [tasks.encode_train_example(s, task.template, tiny_tokenizer, True) for s in task.load_split("train")[:3]]
    batch = tasks.collate_examples(examples, tiny_tokenizer, scoring)
    paired, separate = _both(model, blocks, lambda: tasks.batch_loss(model, batch), [1e-2] * len(blocks))
    assert paired[2] is pairs
    assert paired[:2] == separate[:2]


def test_each_chunk_of_z_is_drawn_once_for_both_losses(monkeypatch):
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    ids = torch.randint(3, 400, (2, 8), generator=torch.Generator().manual_seed(1))
    counts = {}
    for paired in (True, False):
        noise = NoiseSource(threads=2)
        drawn = []
        real = noise.draw
        monkeypatch.setattr(noise, "draw", lambda *a, **k: (drawn.append(a[:3]), real(*a, **k))[1])
        with torch.inference_mode():
            TwoPointProbe(paired).losses(model, blocks, noise, 3, [1e-2] * len(blocks), lambda: logits_loss(model, ids))
        counts[paired] = len(drawn)
    assert counts[False] == 2 * counts[True]


def test_micro_batches_pair_call_by_call():
    """A loss that calls the model once per micro-batch (gradient accumulation) pairs each call."""
    model = build_tiny_model("qwen2", 400)
    blocks = parameter_blocks(model)
    gen = torch.Generator().manual_seed(2)
    micro = [torch.randint(3, 400, (2, 7), generator=gen) for _ in range(3)]
    loss_fn = lambda: sum(logits_loss(model, ids) for ids in micro) / len(micro)  # noqa: E731
    paired, separate = _both(model, blocks, loss_fn, [1e-2] * len(blocks))
    assert paired[2] is True and paired[:2] == separate[:2]


@pytest.mark.parametrize("case", ["labels", "cache", "differing_calls"])
def test_unpairable_losses_fall_back_to_separate_forwards_with_the_same_numbers(case):
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    ids = torch.randint(3, 400, (2, 8), generator=torch.Generator().manual_seed(3))
    calls = []

    def loss_fn():
        calls.append(1)
        if case == "labels":
            return model(input_ids=ids, labels=ids).loss
        if case == "cache":
            return model(input_ids=ids).logits.float().mean()  # use_cache left to the config (True)
        return logits_loss(model, ids[:, :4 + len(calls) % 2])  # the two loss calls differ

    paired, separate = _both(model, blocks, loss_fn, [1e-2] * len(blocks))
    assert paired[2] is False
    if case != "differing_calls":  # a loss that changes between calls has no fixed value to compare
        assert paired[:2] == separate[:2]
    for module in model.modules():  # nothing left installed after the failed attempt
        assert "forward" not in module.__dict__


def test_paired_context_restores_the_model_and_refuses_a_stray_module_call():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = VirtualPerturbation(model, blocks, NoiseSource(threads=1), 1, [1e-3] * len(blocks), signs=(1.0, -1.0))
    with torch.inference_mode(), ctx, pytest.raises(PairingUnsupported):
        model.model.embed_tokens(torch.tensor([[1, 2]]))  # a module called outside a paired model call
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("mode, options", [("mezo", {}), ("mezo_adam", {}), ("hizoo", {"hizoo_alpha": 1e-3}),
                                           ("lozo", {}), ("zo_fine_tuner", None)])
def test_every_two_point_method_takes_the_same_steps_paired_or_not(mode, options):
    from zo.estimator import ZOConfig
    from zo.methods import MethodContext, build_method

    gen = torch.Generator().manual_seed(4)
    batches = [torch.randint(3, 400, (3, 9), generator=gen) for _ in range(3)]
    results = {}
    for paired in (False, True):
        model = build_tiny_model("llama", 400)
        ctx = MethodContext(model, parameter_blocks(model), ZOConfig(lr=1e-3, eps=1e-3, pair_forwards=paired),
                            seed=5, noise=NoiseSource(threads=2), batch_size=3)
        if mode == "zo_fine_tuner":  # a random bank: sigma differs per block and follows L+ and L-
            from zo.estimator import ZOOptimizer
            from zo.pertnn import PertNNBank
            from zo.sigma import LearnedSigma

            bank = PertNNBank([b.name for b in ctx.blocks], generator=torch.Generator().manual_seed(0))
            method = ZOOptimizer(model, LearnedSigma(bank, ctx.blocks, 3), ctx.zo, seed=5, noise=ctx.noise,
                                 blocks=ctx.blocks)
        else:
            method = build_method(mode, ctx, dict(options))
        records = [method.step(lambda ids=ids: logits_loss(model, ids)) for ids in batches]
        results[paired] = ([(r.loss_plus, r.loss_minus) for r in records], [p.detach().clone() for p in model.parameters()])
        assert method.probe.paired is paired  # no fallback: pairing was used when asked for
    assert results[True][0] == results[False][0]
    assert all(torch.equal(a, b) for a, b in zip(results[True][1], results[False][1]))


def test_l2l_meta_step_is_the_same_paired_or_not():
    from zo.l2l import MetaConfig, MetaLearner
    from zo.pertnn import fresh_bank

    ids = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    results = {}
    for paired in (False, True):
        model = build_tiny_model("llama", 400)
        blocks = parameter_blocks(model)
        bank = fresh_bank(blocks, "block", generator=torch.Generator().manual_seed(1))
        learner = MetaLearner(model, bank, blocks, MetaConfig(lr_mlp=1e-2, lr_update=1e-2, zo_eps=1e-2,
                                                              pair_forwards=paired),
                              batch_size=2, seed=3, noise=NoiseSource(threads=2))
        result = learner.meta_step(logits_loss, ids, task="Copa")
        results[paired] = (result.loss_plus, result.loss_minus, learner.bank.w1.detach().clone())
        assert learner.probe.paired is paired
    assert results[True][:2] == results[False][:2]
    assert torch.equal(results[True][2], results[False][2])
