"""Lesion-mask supervision: the cells a peak may land on, the loss's pull, and training with it end to end."""

from __future__ import annotations

import json

import pytest
import torch

from napari_icnn.config import TrainConfig
from napari_icnn.data.synth import write_cohort
from napari_icnn.engine.train import train
from napari_icnn.errors import ConfigError
from napari_icnn.icnn.localisation import (
    distinct_lesion_cells,
    further_location_loss,
    lesion_cells,
    lesion_mask_loss,
)
from napari_icnn.icnn.masked import locate_peak_sets


def test_a_lesion_cell_is_one_whose_centre_lies_within_half_a_cell_of_a_lesion_pixel():
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 0, 1 + 4 * 9, 1 + 4 * 5] = 1  # exactly on cell (9, 5)'s centre at stride 4, offset 1
    masks[0, 1, 3 + 8 * 2 + 5, 3 + 8 * 6] = 1  # 5 px below cell (2, 6)'s centre at stride 8, offset 3: cell (3, 6)
    fine = lesion_cells(masks, 16, 4, 1.0)
    assert fine.shape == (1, 2, 16, 16)
    assert fine[0, 0].nonzero().tolist() == [[9, 5]]
    coarse = lesion_cells(masks, 8, 8, 3.0)
    assert coarse[0, 1].nonzero().tolist() == [[3, 6]]
    with pytest.raises(ValueError, match="B, T, H, W"):
        lesion_cells(masks[0], 8, 8, 3.0)


def test_the_centre_target_keeps_the_cells_whose_centre_lies_in_the_lesion_and_falls_back_for_tiny_ones():
    masks = torch.zeros(1, 2, 64, 64)
    masks[0, 0, 8:12, 4:7] = 1  # holds cell (2, 1)'s centre (9, 5); row 11 is within half a cell of (3, 1)
    masks[0, 1, 10:13, 10:13] = 1  # 3 px between centres 9 and 13: no centre inside
    near = lesion_cells(masks, 16, 4, 1.0)
    centre = lesion_cells(masks, 16, 4, 1.0, "centre")
    assert centre[0, 0].nonzero().tolist() == [[2, 1]]
    assert near[0, 0].nonzero().tolist() == [[2, 1], [3, 1]]
    assert torch.equal(centre[0, 1], near[0, 1]) and near[0, 1].sum() == 4  # nothing exact: the near cells
    with pytest.raises(ValueError, match="near or centre"):
        lesion_cells(masks, 16, 4, 1.0, "middle")


def test_the_separation_loss_ranks_each_filters_images_with_its_category_above_those_without():
    from napari_icnn.icnn.localisation import separation_loss

    torch.manual_seed(0)
    maps = torch.randn(6, 3, 5, 5).requires_grad_()
    positive = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    start = separation_loss(maps, positive)
    start.backward()
    assert maps.grad[:, 2].abs().sum() == 0  # on every image (label-free): nothing to rank
    opt = torch.optim.SGD([maps], lr=2.0)
    for _ in range(300):
        opt.zero_grad()
        separation_loss(maps, positive).backward()
        opt.step()
    peaks = maps.detach().flatten(2).amax(2)
    for f in (0, 1):
        assert peaks[positive[:, f], f].min() > peaks[~positive[:, f], f].max() + 2.0
    assert float(separation_loss(maps, positive).detach()) < 0.2 < float(start.detach())
    none = separation_loss(maps, torch.ones_like(positive))
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="do not fit"):
        separation_loss(maps, positive[:, :2])


def test_the_separation_loss_can_be_limited_to_some_filters():
    from napari_icnn.icnn.localisation import separation_loss

    torch.manual_seed(0)
    maps = torch.randn(4, 3, 5, 5).requires_grad_()
    positive = torch.tensor([[1, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    only_first = torch.tensor([True, False, False])
    loss = separation_loss(maps, positive, only_first)
    loss.backward()
    assert maps.grad[:, 0].abs().sum() > 0 and maps.grad[:, 1:].abs().sum() == 0
    assert torch.isclose(loss, separation_loss(maps[:, :1], positive[:, :1]))
    nothing = separation_loss(maps, positive, torch.zeros(3, dtype=torch.bool))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="include"):
        separation_loss(maps, positive, only_first[:2])


def test_the_loss_moves_each_typed_filters_peak_onto_a_lesion_of_its_type_and_leaves_the_others_alone():
    torch.manual_seed(0)
    n = 8
    cells = torch.zeros(2, 2, n, n, dtype=torch.bool)
    cells[0, 0, 2, 3] = cells[0, 0, 6, 6] = True  # image 0: two lesions of type 0
    cells[1, 1, 5, 1] = True  # image 1: one lesion of type 1, none of type 0
    types = torch.tensor([0, 1, -1])  # filter 2 has no lesion type (label-free)
    maps = torch.randn(2, 3, n, n, requires_grad=True)
    start = lesion_mask_loss(maps, cells, types)
    start.backward()
    assert maps.grad[:, 2].abs().sum() == 0  # no type: no pull
    assert maps.grad[1, 0].abs().sum() == 0 and maps.grad[0, 1].abs().sum() == 0  # type absent from the image
    opt = torch.optim.SGD([maps], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        lesion_mask_loss(maps, cells, types).backward()
        opt.step()
    assert float(lesion_mask_loss(maps, cells, types).detach()) < 0.05 < float(start.detach())
    peak0 = divmod(int(maps[0, 0].argmax()), n)
    assert peak0 in {(2, 3), (6, 6)}  # some lesion of its type, not necessarily both
    assert divmod(int(maps[1, 1].argmax()), n) == (5, 1)
    # nothing to supervise: a zero that still backpropagates
    empty = lesion_mask_loss(maps, torch.zeros_like(cells), types)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def _further(maps, cells, types, n=16, beta=4.0, ratio=0.5, peaks=3):
    mu = torch.relu(maps).detach().flatten(2).argmax(dim=2)
    sets = locate_peak_sets(torch.relu(maps), mu, peaks, n, beta, ratio)
    return further_location_loss(maps, cells, types, sets, n, beta, ratio), sets


def test_each_further_location_moves_onto_a_lesion_in_its_diamond_or_drops_below_the_ratio():
    n = 16  # beta 4: a location's diamond holds the cells within L1 distance 3
    cells = torch.zeros(2, 1, n, n, dtype=torch.bool)
    cells[:, 0, 2, 2] = cells[:, 0, 11, 12] = True  # both images: a lesion under the peak and one near (10, 10)
    cells[1, 0, 11, 12] = False  # image 1: no lesion near its second location
    maps = torch.full((2, 3, n, n), -1.0)
    maps[:, :, 2, 2] = 4.0  # every filter's peak sits on the first lesion
    maps[:, :, 10, 10] = 3.0  # a further location off the lesions, above half the peak
    maps[:, :, 11, 12] = 1.0
    types = torch.tensor([0, -1, 0])
    maps.requires_grad_(True)
    start, sets = _further(maps, cells, types)
    assert sets[0, 0].tolist() == [2 * n + 2, 10 * n + 10, -1]
    start.backward()
    assert maps.grad[:, 1].abs().sum() == 0  # no lesion type: no pull
    assert maps.grad[0, 0, 11, 12] < 0 < maps.grad[0, 0, 10, 10]  # toward the nearby lesion
    assert maps.grad[1, 0, 10, 10] > 0 and maps.grad[1, 0, 11, 12] == 0  # nothing near: drop the location
    assert maps.grad[:, 0, 2, 2].abs().sum() == 0  # the first location is lesion_mask_loss's
    assert bool(torch.isfinite(maps.grad).all())
    opt = torch.optim.SGD([maps], lr=1.0)
    for _ in range(100):
        opt.zero_grad()
        _further(maps, cells, types)[0].backward()
        opt.step()
    loss, sets = _further(maps, cells, types)
    kept = set(sets[0, 0].tolist())  # image 0: the further location moved onto the lesion (which may now lead)
    assert 11 * n + 12 in kept and 10 * n + 10 not in kept
    assert sets[1, 0].tolist() == [2 * n + 2, -1, -1]  # image 1: dropped, below half the peak
    assert float(loss.detach()) < 0.1 * float(start.detach())


def test_the_further_location_loss_is_zero_without_further_locations_and_checks_shapes():
    maps = torch.randn(2, 3, 8, 8, requires_grad=True)
    cells = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    types = torch.tensor([0, 0, -1])
    one = torch.zeros(2, 3, 1, dtype=torch.long)
    zero = further_location_loss(maps, cells, types, one, 8, 4.0, 0.5)
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    none_kept = torch.tensor([[[0, -1]] * 3] * 2)
    assert float(further_location_loss(maps, cells, types, none_kept, 8, 4.0, 0.5).detach()) == 0.0
    with pytest.raises(ValueError, match="do not fit"):
        further_location_loss(maps, cells, types, one[:1], 8, 4.0, 0.5)


def test_distinct_cells_leave_out_the_lesions_earlier_filters_of_the_type_peak_on():
    n = 8
    where = torch.zeros(1, 4, n, n, dtype=torch.bool)
    where[:, :3, 1:3, 1:3] = True  # type 0: lesion A (4 cells) and lesion B (2 cells)
    where[:, :3, 6, 5:7] = True
    where[:, 3, 1:3, 1:3] = True  # filter 3, type 1, sees lesion A only
    maps = torch.zeros(1, 4, n, n)
    maps[0, 0, 1, 1] = maps[0, 1, 6, 5] = maps[0, 2, 2, 2] = maps[0, 3, 2, 1] = 1.0  # filters 0, 1: A, B
    out = distinct_lesion_cells(maps, where, torch.tensor([0, 0, 0, 1]))
    assert torch.equal(out[0, 0], where[0, 0])  # the first filter of a type: every lesion
    assert out[0, 1].nonzero().tolist() == [[6, 5], [6, 6]]  # filter 0 peaks in A: B is left
    assert torch.equal(out[0, 2], where[0, 2])  # A and B both taken: back to every lesion, never none
    assert torch.equal(out[0, 3], where[0, 3])  # another type's peaks take nothing from it


def test_distinct_instances_spread_a_types_filters_over_an_eyes_lesions():
    torch.manual_seed(0)
    n = 8
    cells = torch.zeros(1, 1, n, n, dtype=torch.bool)
    cells[0, 0, 1, 1] = cells[0, 0, 6, 6] = True  # two lesions of the same type
    types = torch.tensor([0, 0])
    base = torch.randn(1, 1, n, n)
    base[0, 0, 1, 1] = 4.0  # both filters start on lesion (1, 1)

    def trained(distinct: bool | torch.Tensor) -> set[tuple[int, int]]:
        maps = base.repeat(1, 2, 1, 1).clone().requires_grad_(True)
        opt = torch.optim.SGD([maps], lr=1.0)
        for _ in range(100):
            opt.zero_grad()
            lesion_mask_loss(maps, cells, types, distinct=distinct).backward()
            opt.step()
        return {divmod(int(maps[0, f].argmax()), n) for f in range(2)}

    assert trained(False) == {(1, 1)}  # any lesion: both stay on the most conspicuous one
    assert trained(True) == {(1, 1), (6, 6)}
    assert trained(torch.tensor([False, True])) == {(1, 1), (6, 6)}  # the second filter's cells alone
    assert trained(torch.tensor([True, False])) == {(1, 1)}  # the first filter has no earlier one to avoid
    with pytest.raises(ValueError, match="does not fit 2 filters"):
        lesion_mask_loss(base.repeat(1, 2, 1, 1), cells, types, distinct=torch.tensor([True]))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohorts")
    write_cohort(root / "train", 32, size=128, seed=111, look="clean")
    write_cohort(root / "val", 16, size=128, seed=112, look="clean")
    return root


SMALL = dict(size=64, batch=8, n_filters=8, width=8, cache="memory", augment=True, epochs=2, warmup_epochs=1)


def test_training_with_lesion_masks_reports_the_mask_loss_and_lowers_it(cohorts, tmp_path):
    # no --lesion-mask-weight: lesion-type filters and masks in the data switch the loss on by default; 128 px,
    # where the lesions are large enough to hold a cell's centre
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "m"),
                      categories="lesion-types", **{**SMALL, "epochs": 4, "size": 128})
    result = train(cfg)
    assert result.epochs_done == 4
    history = json.loads((tmp_path / "m" / "checkpoints" / "history.json").read_text())
    mask_losses = [h["mask_loss"] for h in history[1:]]  # interpretable epochs
    assert all(v > 0 for v in mask_losses)
    assert mask_losses[-1] < mask_losses[0], mask_losses
    saved = json.loads((tmp_path / "m" / "checkpoints" / "config.json").read_text())
    assert saved["lesion_mask_weight"] == 1.0


def test_lesion_mask_weight_needs_lesion_type_filters_and_masks(cohorts, tmp_path):
    with pytest.raises(ConfigError, match="lesion-types"):
        train(TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "a"),
                          categories="decision", lesion_mask_weight=1.0, **SMALL))
    bare = tmp_path / "bare"
    (bare / "images").mkdir(parents=True)
    rows = (cohorts / "train" / "labels.csv").read_text().splitlines()
    for line in rows[1:]:
        i = line.split(",")[0]
        (bare / "images" / f"{i}.png").write_bytes((cohorts / "train" / "images" / f"{i}.png").read_bytes())
    (bare / "labels.csv").write_text("\n".join(rows) + "\n")
    for name in ("cohort.json",):
        if (cohorts / "train" / name).is_file():
            (bare / name).write_text((cohorts / "train" / name).read_text())
    with pytest.raises(ConfigError, match="lesion mask") as err:
        train(TrainConfig(data=str(bare), val=str(cohorts / "val"), out=str(tmp_path / "b"),
                          categories="lesion-types", lesion_mask_weight=1.0, **SMALL))
    assert str(bare) in str(err.value)
    assert not (tmp_path / "b").exists()
    # left to its default, the weight falls back to the paper's image-level supervision on data without masks
    train(TrainConfig(data=str(bare), val=str(cohorts / "val"), out=str(tmp_path / "c"), categories="lesion-types",
                      **SMALL))
    saved = json.loads((tmp_path / "c" / "checkpoints" / "config.json").read_text())
    assert saved["lesion_mask_weight"] == 0
    history = json.loads((tmp_path / "c" / "checkpoints" / "history.json").read_text())
    assert not any(h.get("mask_loss") for h in history)
    with pytest.raises(ConfigError, match="--lesion-mask-weight"):
        TrainConfig(lesion_mask_weight=-1.0)


def test_the_silence_loss_pulls_absent_filters_below_zero_and_leaves_the_others():
    from napari_icnn.icnn.localisation import silence_loss

    torch.manual_seed(0)
    maps = (torch.randn(2, 3, 6, 6) + 2.0).requires_grad_()
    absent = torch.tensor([[True, False, False], [False, False, True]])
    start = silence_loss(maps, absent)
    opt = torch.optim.SGD([maps], lr=5.0)
    for _ in range(600):  # the gradient reaches the highest cell only, one cell at a time
        opt.zero_grad()
        silence_loss(maps, absent).backward()
        opt.step()
    peaks = maps.detach().flatten(2).amax(2)
    assert float(silence_loss(maps, absent).detach()) < 0.5 < 2.0 < float(start.detach())  # softplus(0) = 0.69
    assert peaks[0, 0] < 0 and peaks[1, 2] < 0  # silent where the category is absent
    assert peaks[0, 1] > 1 and peaks[1, 0] > 1  # untouched elsewhere
    assert float(silence_loss(maps, torch.zeros_like(absent)).detach()) == 0.0
    with pytest.raises(ValueError, match="do not fit"):
        silence_loss(maps, absent[:, :2])


def test_training_with_the_silence_loss_reports_it_and_lowers_it(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "s"),
                      categories="lesion-types", lesion_mask_weight=0.0, silence_weight=1.0, **{**SMALL, "epochs": 4})
    train(cfg)
    history = json.loads((tmp_path / "s" / "checkpoints" / "history.json").read_text())
    losses = [h["silence_loss"] for h in history[1:]]  # interpretable epochs
    assert all(v > 0 for v in losses) and losses[-1] < losses[0], losses
    with pytest.raises(ConfigError, match="--silence-weight"):
        TrainConfig(silence_weight=-1.0)


def test_training_with_the_centre_target_and_the_separation_loss_reports_both(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "c"),
                      categories="lesion-types", lesion_mask_target="centre", separation_weight=1.0,
                      **{**SMALL, "epochs": 3})
    train(cfg)
    history = json.loads((tmp_path / "c" / "checkpoints" / "history.json").read_text())
    assert all(h["separation_loss"] > 0 and h["mask_loss"] > 0 for h in history[1:])  # interpretable epochs
    saved = json.loads((tmp_path / "c" / "checkpoints" / "config.json").read_text())
    assert saved["lesion_mask_target"] == "centre" and saved["separation_weight"] == 1.0
    assert saved["separation_types"] == ""  # every category filter
    with pytest.raises(ConfigError, match="--separation-weight"):
        TrainConfig(separation_weight=-1.0)
    with pytest.raises(ConfigError, match="--lesion-mask-target"):
        TrainConfig(lesion_mask_target="middle")


def test_training_with_distinct_lesion_instances_records_the_setting(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "d"),
                      categories="lesion-types", lesion_mask_instances="distinct", distinct_types="EX, SE",
                      **{**SMALL, "size": 128})
    train(cfg)
    history = json.loads((tmp_path / "d" / "checkpoints" / "history.json").read_text())
    assert all(h["mask_loss"] > 0 for h in history[1:])  # interpretable epochs
    saved = json.loads((tmp_path / "d" / "checkpoints" / "config.json").read_text())
    assert saved["lesion_mask_instances"] == "distinct" and saved["distinct_types"] == "EX, SE"
    assert cfg.distinct_type_keys == ("EX", "SE")
    with pytest.raises(ConfigError, match="--lesion-mask-instances"):
        TrainConfig(lesion_mask_instances="all")


def test_training_that_supervises_every_part_location_records_the_setting(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "e"),
                      categories="lesion-types", template_peaks=3, peak_ratio=0.3, lesion_mask_locations="every",
                      **{**SMALL, "size": 128})
    train(cfg)
    history = json.loads((tmp_path / "e" / "checkpoints" / "history.json").read_text())
    # interpretable epochs: further locations were kept and supervised, inside the lesion-mask loss
    assert all(h["mask_loss"] > h["further_location_loss"] > 0 for h in history[1:])
    saved = json.loads((tmp_path / "e" / "checkpoints" / "config.json").read_text())
    assert saved["lesion_mask_locations"] == "every" and saved["template_peaks"] == 3
    with pytest.raises(ConfigError, match="--lesion-mask-locations: every needs --template-peaks above 1"):
        TrainConfig(lesion_mask_locations="every")
    with pytest.raises(ConfigError, match="--lesion-mask-locations every .* --lesion-mask-weight above 0"):
        train(TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "f"),
                          categories="lesion-types", template_peaks=2, lesion_mask_locations="every",
                          lesion_mask_weight=0.0, **SMALL))
    assert not (tmp_path / "f").exists()


def test_the_separation_loss_limited_to_microaneurysm_filters_trains(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "m"),
                      categories="lesion-types", separation_weight=1.0, separation_types="MA",
                      **{**SMALL, "epochs": 2})
    assert cfg.resolved(lesion_labels=True).separated_categories == (True, False, False, False)  # MA, HE, EX, SE
    train(cfg)
    history = json.loads((tmp_path / "m" / "checkpoints" / "history.json").read_text())
    assert history[-1]["separation_loss"] > 0
    assert all(isinstance(h["filters_rematched"], int) and 0 <= h["filters_rematched"] <= 8 for h in history)
    assert json.loads((tmp_path / "m" / "checkpoints" / "config.json").read_text())["separation_types"] == "MA"
    with pytest.raises(ConfigError, match="--separation-types: XX is not a lesion type"):
        TrainConfig(separation_types="MA, XX")


def test_a_model_whose_decision_rests_on_one_filter_is_reported(cohorts, tmp_path):
    """Every lesion-type filter below the selectivity the decision asks for: one is kept, and the run warns."""
    from napari_icnn.progress import Message

    events = []
    train(TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "w"),
                      categories="lesion-types", decision_min_selectivity=0.999, **SMALL), on_event=events.append)
    warned = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any(w.startswith("the decision of the written model rests on 1 filter") for w in warned), warned


def test_peak_hits_say_which_categorys_lesion_each_filters_peak_lies_in():
    from napari_icnn.icnn.localisation import peak_hits

    n = 6
    cells = torch.zeros(2, 3, n, n, dtype=torch.bool)  # mask channels 0, 1, 2
    cells[0, 0, 1, 1] = True
    cells[0, 2, 4, 4] = True
    cells[1, 2, 0, 5] = True
    maps = torch.zeros(2, 2, n, n)
    maps[0, 0, 1, 1] = maps[1, 0, 0, 5] = 1.0  # filter 0 peaks on channel 0's lesion, then on channel 2's
    maps[0, 1, 4, 4] = maps[1, 1, 3, 3] = 1.0  # filter 1 on channel 2's lesion, then on nothing
    # categories: channel 2, channel 0, and one without masks
    hit, present = peak_hits(maps, cells, torch.tensor([2, 0, -1]))
    assert hit.shape == (2, 2, 3) and present.shape == (2, 3)
    assert present.tolist() == [[True, True, False], [True, False, False]]
    assert hit[0].tolist() == [[False, True, False], [True, False, False]]
    assert hit[1].tolist() == [[True, False, False], [False, False, False]]
    with pytest.raises(ValueError, match="do not fit"):
        peak_hits(maps[:1], cells, torch.tensor([0]))


def test_matching_by_lesion_hits_tells_apart_types_that_come_in_the_same_eyes():
    """Two types in the same eyes: image-level selectivity cannot tell their filters apart, where they peak can."""
    from napari_icnn.icnn.assignment import FilterAssignment

    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]] * 8)  # both types, or neither
    act = torch.full((16, 4), 0.1) + 4.0 * labels[:, :1] + 0.01 * torch.arange(4.0)
    in_lesion = torch.zeros(16, 4, 2, dtype=torch.bool)
    in_lesion[:, :2, 1] = True  # filters 0 and 1 peak on type 1's lesions
    in_lesion[:, 2:, 0] = True  # filters 2 and 3 on type 0's
    present = labels > 0.5
    by_selectivity = FilterAssignment(4, 2, balanced=True)
    by_hits = FilterAssignment(4, 2, balanced=True, match_by="lesion-hits")
    for a in (by_selectivity, by_hits):
        a.train()
        a.update(act, labels)
    assert by_hits.categories.tolist() == by_selectivity.categories.tolist()  # no hits seen yet: selectivity
    by_hits.update_hits(in_lesion, present)
    by_hits.refresh()
    assert by_hits.categories.tolist() == [1, 1, 0, 0]
    assert by_selectivity.categories.tolist() != [1, 1, 0, 0]
    # the hit rates are part of the state: a resumed run matches as the interrupted one did
    again = FilterAssignment(4, 2, balanced=True, match_by="lesion-hits")
    again.load_state_dict(by_hits.state_dict())
    again.refresh()
    assert again.categories.tolist() == [1, 1, 0, 0]
    # an older checkpoint without hit rates still loads
    old = FilterAssignment(4, 2, balanced=True, match_by="lesion-hits")
    old.load_state_dict({k: v for k, v in by_hits.state_dict().items() if not k.startswith("hits")})
    assert not bool(old.hits_seen.any())
    by_hits.eval()
    by_hits.update_hits(~in_lesion, present)  # evaluation does not learn
    by_hits.refresh()
    assert by_hits.categories.tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="lesion hits must be"):
        by_hits.train()
        by_hits.update_hits(in_lesion[:, :3], present)
    with pytest.raises(ConfigError, match="filter matching ranks by"):
        FilterAssignment(4, 2, match_by="where")


def test_training_matched_by_lesion_hits_records_the_hit_rates(cohorts, tmp_path):
    cfg = TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "h"),
                      categories="lesion-types", match_filters_by="lesion-hits", **{**SMALL, "epochs": 3})
    train(cfg)
    best = torch.load(tmp_path / "h" / "checkpoints" / "best.pt", weights_only=True)
    assignment = best["assignment"]
    assert assignment["hits_seen"].all()  # every type's lesions were seen on training eyes
    assert 0.0 < float(assignment["hits"].max()) <= 1.0
    assert (assignment["matching"][2:] >= 0).all()  # 8 filters, a quarter label-free
    saved = json.loads((tmp_path / "h" / "checkpoints" / "config.json").read_text())
    assert saved["match_filters_by"] == "lesion-hits"
    with pytest.raises(ConfigError, match="--match-filters-by lesion-hits .* needs"):
        train(TrainConfig(data=str(cohorts / "train"), val=str(cohorts / "val"), out=str(tmp_path / "x"),
                          categories="lesion-types", lesion_mask_weight=0.0, match_filters_by="lesion-hits",
                          **SMALL))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--match-filters-by"):
        TrainConfig(match_filters_by="where")


def test_matching_by_hits_and_selectivity_passes_over_a_filter_that_fires_on_every_eye():
    """Filter 0 lands on type 0's lesions but fires alike on eyes without them; filter 1 lands there less often
    and only fires on eyes with type 0. Hits alone give type 0 filter 0; hits and selectivity give it filter 1."""
    from napari_icnn.icnn.assignment import FilterAssignment

    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]] * 4)
    act = torch.full((16, 3), 0.1)
    act[:, 0] = 3.0  # every eye
    act[:, 1] += 3.0 * labels[:, 0]
    act[:, 2] += 3.0 * labels[:, 1]
    in_lesion = torch.zeros(16, 3, 2, dtype=torch.bool)
    in_lesion[:, 0, 0] = True
    in_lesion[::2, 1, 0] = True
    in_lesion[:, 2, 1] = True
    present = labels > 0.5
    picks = {}
    for by in ("lesion-hits", "hits-and-selectivity"):
        a = FilterAssignment(3, 2, balanced=True, match_by=by)  # shares 2 and 1: type 0 gets two filters
        b = FilterAssignment(2, 2, balanced=True, match_by=by)  # one filter each, filters 0 and 1 only
        for x, n in ((a, 3), (b, 2)):
            x.train()
            x.update(act[:, :n], labels)
            x.update_hits(in_lesion[:, :n], present)
            x.refresh()
        picks[by] = b.categories.tolist()
        assert a.categories.tolist()[2] == 1
    assert picks["lesion-hits"] == [0, 1]
    assert picks["hits-and-selectivity"] == [1, 0]
