"""The method's commands end to end through ``cryofire_nb.cli.main`` on a tiny synthetic
set: train, then infer (the same particles give back the run's own poses and z),
eval-vol (volumes with the voxel size; the median z reproduces volume.mrc) and evaluate
(metrics JSON and figures); and the demo on a miniature simulation config."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml

from cryofire_nb.cli import main
from cryofire_nb.io import read_latents, read_mrc, read_poses, write_indices
from cryofire_nb.train.synthetic import make_synthetic_set

D = 16
N = 96


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    s = make_synthetic_set(root / "data", n=N, d=D, n_levels=3, snr=2.0, seed=6)
    run = root / "run"
    rc = main(["train", str(s.particles), "--ctf", str(s.ctf), "-o", str(run), "--method", "amortised", "--zdim", "2", "--epochs", "2",
               "--encoder", "released", "--encoder-channels", "8", "16", "32", "--encoder-hidden", "32",
               "--decoder-hidden", "32", "--decoder-layers", "1", "--pe-dim", "4", "-b", "32", "--no-progress",
               "--gt-poses", str(s.poses), "--gt-conf", str(s.conf)])
    assert rc == 0
    return s, run


def test_infer_reproduces_the_runs_final_pass(trained, tmp_path, capsys):
    s, run = trained
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(tmp_path / "inf"), "-b", "40"])
    assert rc == 0
    assert "images/s" in capsys.readouterr().out
    a, b = read_poses(run / "poses.pkl"), read_poses(tmp_path / "inf" / "poses.pkl")
    assert np.allclose(a.rots, b.rots, atol=1e-5) and np.allclose(a.trans_frac, b.trans_frac, atol=1e-6)
    assert np.allclose(read_latents(run / "z.pkl").mu, read_latents(tmp_path / "inf" / "z.pkl").mu, atol=1e-5)
    # a subset (--ind) gives the same rows
    write_indices(tmp_path / "ind.pkl", np.array([5, 1, 40]))
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "--ind", str(tmp_path / "ind.pkl"),
               "-o", str(tmp_path / "sub")])
    assert rc == 0
    sub = read_poses(tmp_path / "sub" / "poses.pkl")
    assert np.allclose(sub.rots, a.rots[[5, 1, 40]], atol=1e-5)


def test_infer_search_writes_searched_and_encoder_poses(trained, tmp_path, capsys):
    s, run = trained
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(tmp_path / "inf"), "--search",
               "--search-bins", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pose search against the decoder" in out and "images/s" in out
    enc, searched = read_poses(tmp_path / "inf" / "encoder_poses.pkl"), read_poses(tmp_path / "inf" / "poses.pkl")
    run_poses = read_poses(run / "poses.pkl")
    assert np.allclose(enc.rots, run_poses.rots, atol=1e-5)  # the encoder's poses, as without --search
    assert searched.rots.shape == (N, 3, 3) and not np.allclose(searched.rots, enc.rots, atol=1e-3)
    assert np.allclose(np.einsum("nij,nkj->nik", searched.rots, searched.rots), np.eye(3), atol=1e-4)
    assert np.abs(searched.trans_frac * D).max() <= 1.5 + 1e-6
    # z: the encoder's in encoder_z.pkl (the run's own z here: no pose table), the search's in z.pkl
    enc_z, z = read_latents(tmp_path / "inf" / "encoder_z.pkl").mu, read_latents(tmp_path / "inf" / "z.pkl").mu
    assert np.allclose(enc_z, read_latents(run / "z.pkl").mu, atol=1e-5)
    assert z.shape == (N, 2) and np.isfinite(z).all() and not np.allclose(z, enc_z, atol=1e-3)
    record = yaml.safe_load((tmp_path / "inf" / "infer.yaml").read_text())
    assert record["run"] == str(run.resolve()) and record["search"] is True and record["search_images_per_s"] > 0
    # evaluate scores an infer output with the run it names
    rc = main(["evaluate", str(tmp_path / "inf"), "--gt-poses", str(s.poses), "--gt-conf", str(s.conf),
               "-o", str(tmp_path / "ev")])
    assert rc == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    from cryofire_nb.metrics import evaluate_run
    m = evaluate_run(searched.rots, searched.trans_frac, read_poses(s.poses).rots, read_poses(s.poses).trans_frac, D)
    assert metrics["summary"][2] == m.summary_lines()[2]  # the view-error line of the searched poses
    record["run"] = str(tmp_path / "gone")
    (tmp_path / "inf" / "infer.yaml").write_text(yaml.safe_dump(record))
    rc = main(["evaluate", str(tmp_path / "inf"), "--gt-poses", str(s.poses), "-o", str(tmp_path / "ev2")])
    err = capsys.readouterr().err
    assert rc == 2 and "gone/weights.pt" in err and not (tmp_path / "ev2").exists()
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(tmp_path / "bad"), "--search",
               "--search-bins", "0"])
    assert rc == 2 and "--search-bins" in capsys.readouterr().err


def test_decoder_basis_is_linear_in_the_runs_z(trained, tmp_path):
    """infer --search reads the decoder as V(a) = sum_k a_k B_k over the principal
    components of the run's z: exact for the voxel decoder (V_0 + sum_k z_k U_k), the
    least-squares fit for the hypervolume (close at the z it was fitted to)."""
    import torch

    from cryofire_nb.search import real_to_hartley_volume
    from cryofire_nb.train import load_weights
    from cryofire_nb.train.infer import decoder_basis
    s, run = trained
    vox = tmp_path / "vox"
    rc = main(["train", str(s.particles), "--ctf", str(s.ctf), "-o", str(vox), "--method", "amortised", "--zdim", "2", "--epochs", "1",
               "--decoder", "voxel", "--encoder", "released", "--encoder-channels", "8", "16", "32",
               "--encoder-hidden", "32", "-b", "32", "--no-progress"])
    assert rc == 0
    for folder, tol in ((vox, 1e-4), (run, 0.2)):
        model = load_weights(folder)
        z_ref = read_latents(folder / "z.pkl").mu
        basis, pcs = decoder_basis(model, z_ref, scale=1.0)
        assert basis.shape == (3, D + 1, D + 1, D + 1)
        for z in (z_ref[3], z_ref[50], z_ref.mean(0) + 0.5 * z_ref.std(0)):
            with torch.no_grad():
                v = real_to_hartley_volume(model.decoder.eval_volume(torch.as_tensor(z, dtype=torch.float32)))
            lin = (pcs.coefficients(z[None])[0][:, None, None, None] * basis).sum(0)
            rel = float((lin - v).norm() / v.norm())
            assert rel < tol, (folder.name, rel)


def test_infer_needs_the_ctf_the_run_used(trained, tmp_path, capsys):
    s, run = trained
    rc = main(["infer", str(run), str(s.particles), "-o", str(tmp_path / "inf")])
    assert rc == 2 and "--ctf" in capsys.readouterr().err
    assert not (tmp_path / "inf").exists()


def test_eval_vol_writes_volumes_at_given_z(trained, tmp_path):
    s, run = trained
    z = read_latents(run / "z.pkl").mu
    med = np.median(z, axis=0)
    rc = main(["eval-vol", str(run), "--z", *map(str, med), "-o", str(tmp_path / "one")])
    assert rc == 0
    one = read_mrc(tmp_path / "one" / "vol_000.mrc")
    ref = read_mrc(run / "volume.mrc")
    assert one.pixel_size_angstrom == pytest.approx(4.0, rel=1e-4)
    assert np.allclose(one.data, ref.data, atol=1e-5 * np.abs(ref.data).max())
    with open(tmp_path / "zs.pkl", "wb") as f:
        pickle.dump(z[:3], f)
    rc = main(["eval-vol", str(run), "--zfile", str(tmp_path / "zs.pkl"), "-o", str(tmp_path / "many")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    rc = main(["eval-vol", str(run), "--z", "0", "-o", str(tmp_path / "bad")])  # zdim is 2
    assert rc == 2 and not (tmp_path / "bad").exists()


def test_evaluate_writes_metrics_and_figures(trained, tmp_path):
    s, run = trained
    out = tmp_path / "eval"
    rc = main(["evaluate", str(run), "--gt-poses", str(s.poses), "--gt-conf", str(s.conf), "--gt-vols",
               str(s.folder), "-o", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == N and m["image_size_px"] == D
    assert 0 <= m["rotations"]["view"]["median_deg"] <= 180
    assert m["conformation"]["spearman_pc1_conf"] is not None
    assert len(m["volumes"]) == 3 and m["true_volumes"][0] == "vol_state_00.mrc"
    for name in ("view_error_hist.png", "latent_pca.png", "fsc.png"):
        assert (out / name).stat().st_size > 1000
    # the history logged the same metrics during training
    hist = json.loads((run / "history.json").read_text())
    assert hist["eval"] and hist["final"]["n_images"] == N
    assert hist["final"]["rotations"]["view"]["median_deg"] == pytest.approx(m["rotations"]["view"]["median_deg"])


def test_demo_on_a_miniature_config(repo_root, tmp_path):
    cfg = yaml.safe_load((repo_root / "data_demo" / "demo_sim.yaml").read_text())
    cfg["structures"] = [str(repo_root / "data_demo" / p) for p in cfg["structures"]]
    cfg.update(n_particles=120, d=16, pixel_size_angstrom=5.8)
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--device", "cpu", "--minutes", "0.1", "--config", str(tmp_path / "mini.yaml"),
               "--no-progress"])
    assert rc == 0
    report = (out / "REPORT.md").read_text()
    assert "median view error" in report and "known_pose_reconstruction.png" in report
    for rel in ("known_pose_reconstruction.png", "train/poses.pkl", "eval/metrics.json", "eval/fsc.png"):
        assert (out / rel).is_file(), rel


def test_distillation_with_quarter_turns_turns_targets_and_outputs_together(trained):
    """--quarter-turns: the encoder sees each image turned by k quarter turns and is
    scored against the target turned by the same k; its poses come back in the original
    frame. An encoder that always answers R0 shows it: its returned poses are
    quarter_turn_pose(R0, -k) for the k each image got, and the pose loss is the chordal
    distance of R0 to the targets turned by those k."""
    import torch

    from cryofire_nb.lattice import Lattice
    from cryofire_nb.model.encoder import EncoderOutput
    from cryofire_nb.model.schedule import PoseOnlyPhase
    from cryofire_nb.rotations import quarter_turn_pose, random_rotations
    from cryofire_nb.train import load_weights
    from cryofire_nb.train.data import ParticleData
    from cryofire_nb.train.steps import PoseTargets, distill_step
    s, run = trained
    model = load_weights(run)
    data = ParticleData(str(s.particles), ctf=str(s.ctf), preprocess_config=model.spec.preprocess_config,
                        normalization=model.spec.norm)
    r0 = random_rotations(1, generator=torch.Generator().manual_seed(2))[0].float()

    class Constant(torch.nn.Module):
        def forward(self, x):
            b = x.shape[0]
            return EncoderOutput(r0.expand(b, 3, 3), torch.zeros(b, 2), torch.zeros(b, 2), None)

    model.encoder = Constant()
    batch = data.batch(np.arange(32))
    target = PoseTargets(random_rotations(32, generator=torch.Generator().manual_seed(3)).float(),
                         torch.randn(32, 2, generator=torch.Generator().manual_seed(4)))
    lat = Lattice(D)
    res = distill_step(model, batch, target, lat, lat.mask(D / 2), 0, PoseOnlyPhase(0), 0.0, 1.0, 0.0,
                       torch.Generator().manual_seed(5), quarter_turns=True)
    cands = torch.stack([quarter_turn_pose(r0[None], torch.zeros(1, 2), torch.tensor([-j]))[0][0] for j in range(4)])
    k = (res.rots[:, None] - cands[None]).abs().amax((-1, -2)).argmin(1)  # which turn each image got
    assert torch.allclose(res.rots, cands[k], atol=1e-6) and len(set(k.tolist())) > 1
    turned, _ = quarter_turn_pose(target.rots, target.shift_px, k)
    # pose loss = mean over both paths of the chordal distance; the mirrored path's target is
    # the mirror of the turned one, and a constant encoder answers R0 on both
    from cryofire_nb.rotations import mirror_pose
    chord = (r0 - turned).square().sum((-1, -2)) + (r0 - mirror_pose(turned)[0]).square().sum((-1, -2))
    assert torch.allclose(res.pose_loss, 0.5 * chord.mean(), rtol=1e-5)
    plain = distill_step(model, batch, target, lat, lat.mask(D / 2), 0, PoseOnlyPhase(0), 0.0, 1.0, 0.0,
                         torch.Generator().manual_seed(5), quarter_turns=False)
    assert torch.allclose(plain.rots, r0.expand(32, 3, 3)) and not torch.allclose(plain.pose_loss, res.pose_loss)


def test_infer_quarter_turns_keeps_the_best_fitting_hypothesis(trained, tmp_path):
    """infer --quarter-turns: each image is also encoded turned by 1-3 quarter turns and
    the decoder's loss picks the hypothesis. Every returned pose, mapped back to the
    original image, fits it exactly as well as the loss says (the mapping is exact), and
    never worse than the single pass."""
    import torch

    from cryofire_nb.model.losses import slice_loss
    from cryofire_nb.train import load_weights
    from cryofire_nb.train.data import ParticleData
    from cryofire_nb.train.infer import infer_dataset
    s, run = trained
    model = load_weights(run)
    data = ParticleData(str(s.particles), ctf=str(s.ctf), preprocess_config=model.spec.preprocess_config,
                        normalization=model.spec.norm)
    one = infer_dataset(model, data, batch_size=40)
    four = infer_dataset(model, data, batch_size=40, turns=4)
    assert np.all(four.loss <= one.loss + 1e-6) and np.mean(four.loss < one.loss - 1e-6) > 0.2
    same = np.isclose(four.loss, one.loss, rtol=0, atol=1e-7)
    assert np.allclose(four.rots[same], one.rots[same], atol=1e-5)
    batch = data.batch(np.arange(N))
    mask = data.lattice.mask(model.spec.final_radius_px or D / 2, exclude_dc=True)
    with torch.no_grad():
        refit = slice_loss(model.decoder, torch.as_tensor(four.rots), torch.as_tensor(four.shift_px),
                           torch.as_tensor(four.z), batch.hartley, batch.ctf, data.lattice, mask).per_image
    assert np.allclose(refit.numpy(), four.loss, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="turns"):
        infer_dataset(model, data, turns=2)
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(tmp_path / "qt"), "--quarter-turns"])
    assert rc == 0
    assert np.allclose(read_poses(tmp_path / "qt" / "poses.pkl").rots, four.rots, atol=1e-5)
    assert yaml.safe_load((tmp_path / "qt" / "infer.yaml").read_text())["quarter_turns"] is True


def test_infer_refine_never_returns_a_pose_worse_than_the_encoders(trained, tmp_path, capsys):
    """--refine: local rounds from the encoder's poses against the decoder; by the decoder's
    own loss no particle ends worse than the encoder left it, and some end better."""
    import yaml

    from cryofire_nb.train import ParticleData, load_weights
    from cryofire_nb.train.infer import decoder_losses

    s, run = trained
    out = tmp_path / "ref"
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(out), "--refine"])
    assert rc == 0
    assert "local refinement against the decoder" in capsys.readouterr().out
    record = yaml.safe_load((out / "infer.yaml").read_text())
    assert record["refine"] and record["refine_images_per_s"] > 0
    model = load_weights(run)
    data = ParticleData(str(s.particles), ctf=str(s.ctf), preprocess_config=model.spec.preprocess_config,
                        normalization=model.spec.norm)
    enc, ref = read_poses(out / "encoder_poses.pkl"), read_poses(out / "poses.pkl")
    z_enc, z_ref = read_latents(out / "encoder_z.pkl").mu, read_latents(out / "z.pkl").mu
    loss_enc = decoder_losses(model, data, enc.rots, enc.shift_px(D), z_enc)
    loss_ref = decoder_losses(model, data, ref.rots, ref.shift_px(D), z_ref)
    assert np.all(loss_ref <= loss_enc * (1 + 1e-4) + 1e-7)
    assert (loss_ref < loss_enc * (1 - 1e-3)).mean() > 0.2  # the refinement moved a good share of them
    rc = main(["infer", str(run), str(s.particles), "--ctf", str(s.ctf), "-o", str(tmp_path / "x"), "--refine",
               "--search"])
    assert rc == 2
