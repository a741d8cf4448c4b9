"""The selection/report cut of the validation videos."""

import numpy as np

from mtl.eval.ensemble import ensemble_report
from mtl.eval.split import halves, selection_half, video_names
from tests.eval.test_ensemble import labelled, member


def test_the_halves_are_disjoint_videos_each_carrying_every_task_and_match_the_ensembles_cut():
    preds = member(labelled(videos=12), noise=0.3, seed=0)
    selection, report = halves(preds, seed=5)
    assert not (selection & report).any() and (selection | report).all()
    assert not set(video_names(preds, selection)) & set(video_names(preds, report))
    for mask in (selection, report):
        assert (preds.au_true[mask] != -1).all(axis=1).any()
        assert (preds.expr_true[mask] != -1).any()
    ensemble = ensemble_report([preds], seed=5)
    assert ensemble["selected_on_videos"] == video_names(preds, selection)
    assert ensemble["reported_on_videos"] == video_names(preds, report)
    chosen = selection_half(preds, seed=5)
    assert chosen.keys.tolist() == [k for k, s in zip(preds.keys, selection) if s]
    assert np.array_equal(chosen.au_prob, preds.au_prob[selection]) and chosen.protocol is preds.protocol


def test_one_video_cannot_be_cut_and_is_kept_whole():
    preds = member(labelled(videos=1), noise=0.3, seed=0)
    assert selection_half(preds) is preds
