"""bioimage.io export and import: the package reproduces the checkpoint's predictions,
validates with bioimageio.spec/.core, and bad packages are refused with one clear line."""

import io
import os
import zipfile

import numpy as np
import pytest
import torch
import yaml
import zarr

from unetpipe.cli import main
from unetpipe.core.cluster import Execution
from unetpipe.core.errors import InputError, UnetpipeError
from unetpipe.io.images import write_ome_zarr, write_tiff
from unetpipe.nn.bioimageio import (
    UNetProbabilities,
    declared_preprocessing,
    export_model,
    import_model,
)
from unetpipe.nn.checkpoint import FORMAT, VERSION, build_model, save_checkpoint
from unetpipe.nn.model import UNet
from unetpipe.nn.models import load_checkpoint
from unetpipe.nn.tiles import predict_array
from unetpipe.stages.predict import predict_store
from unetpipe.stages.preprocess import percentile_normalize

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")]

CLASSES = ["background", "interior", "boundary"]


def bioimageio_or_skip(module: str):
    """The module; skipped where it is missing, but a failure under CI=true."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        try:
            return __import__(module, fromlist=["_"])
        except ImportError as e:
            pytest.fail(f"CI=true, but {module} is not installed: {e}")
    return pytest.importorskip(module)


def tiny_checkpoint(path, *, ndim=2, channels=1, padding="same", pooling=None, clip=False):
    torch.manual_seed(0)
    model = UNet(ndim=ndim, in_channels=channels, out_channels=3, depth=2, features=4,
                 padding=padding, norm="batch", pooling=pooling)
    for m in model.modules():  # trained-looking statistics: eval mode is not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    save_checkpoint({
        "format": FORMAT, "version": VERSION, "iteration": 7, "val_ap": 0.625,
        "model": {"class": "UNet", "config": model.config, "state_dict": model.state_dict()},
        "normalization": {"percentiles": [1.0, 99.8], "clip": clip},
        "targets": {"mode": "three_class", "classes": CLASSES, "w0": 10.0, "sigma": 5.0,
                    "class_balance": True},
        "data": {"ndim": ndim, "channels": channels, "spacing": [0.5] * ndim,
                 "unit": "micrometer", "train": ["train_000"], "val": ["val_000"]},
        "config": {"train": {"lr": 1e-3, "iterations": 7}},
    }, path)
    return path, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2D checkpoint and its package (not validated here: see the slow test)."""
    d = tmp_path_factory.mktemp("bioimageio")
    ckpt, model = tiny_checkpoint(d / "model.pt")
    result = export_model(ckpt, d / "model.zip", test_shape=(64, 48), authors=["A. Person"],
                          validate=False)
    return ckpt, model, d / "model.zip", result


def read_npy(package, name):
    with zipfile.ZipFile(package) as zf:
        return np.load(io.BytesIO(zf.read(name)))


def rdf_of(package):
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def test_package_contents_and_description(exported):
    _, model, package, result = exported
    assert result.output == os.fspath(package) and result.test_shape == (64, 48)
    assert result.weight_formats == ("pytorch_state_dict", "torchscript")
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy",
            "test_output.npy", "README.md", "cover.png"} <= names
    rdf = rdf_of(package)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert rdf["authors"] == [{"name": "A. Person"}]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    ipt, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in ipt["axes"]] == ["batch", "channel", "y", "x"]
    assert ipt["axes"][2]["size"] == {"min": 4, "step": 4}  # depth 2: pooling factor 4
    assert ipt["axes"][2]["scale"] == 0.5 and ipt["axes"][2]["unit"] == "micrometer"
    scale = next(p for p in ipt["preprocessing"] if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"], scale["axes"]) == (1.0, 99.8,
                                                                                ["y", "x"])
    assert not any(p["id"] == "clip" for p in ipt["preprocessing"])
    assert out["axes"][1]["channel_names"] == CLASSES
    assert out["axes"][2]["size"] == {"tensor_id": "raw", "axis_id": "y"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["import_from"] == "unetpipe.bioimageio" and arch["kwargs"] == model.config
    meta = rdf["config"]["unetpipe"]
    assert meta["format"] == FORMAT and meta["targets"]["classes"] == CLASSES
    assert meta["val_ap"] == 0.625 and meta["config"]["train"]["lr"] == 1e-3
    assert "state_dict" not in meta["model"]
    # the test output is the network's output on the declared preprocessing of the raw input
    raw = read_npy(package, "test_input.npy")
    assert raw.shape == (1, 1, 64, 48) and raw.dtype == np.float32 and raw.max() > 100
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(
            declared_preprocessing(raw[0], (1.0, 99.8))[None])), 1).numpy()
    np.testing.assert_allclose(read_npy(package, "test_output.npy"), ref, atol=1e-6)


def test_declared_preprocessing_matches_unetpipe_normalisation(exported):
    """bioimage.io's scale_range (float32 quantiles, + eps 1e-6) vs unetpipe's preprocess
    (float64 percentiles): far inside test_model's tolerance (1e-3)."""
    raw = read_npy(exported[2], "test_input.npy")[0]
    sample = raw.reshape(1, -1).astype(np.float64)
    ours = percentile_normalize(raw, np.percentile(sample, 1.0, axis=1),
                                np.percentile(sample, 99.8, axis=1))
    declared = declared_preprocessing(raw, (1.0, 99.8))
    assert np.abs(ours - declared).max() < 1e-5 * max(1.0, float(np.abs(ours).max()))
    clipped = declared_preprocessing(raw, (1.0, 99.8), clip=True)
    assert clipped.min() == 0.0 and clipped.max() == 1.0


def test_import_gives_the_same_predictions(exported, tmp_path):
    _, model, package, _ = exported
    ckpt = import_model(package)
    assert ckpt["format"] == FORMAT and ckpt["targets"]["classes"] == CLASSES
    assert ckpt["model"]["config"] == model.config and ckpt["iteration"] == 7
    image = np.random.default_rng(0).random((1, 37, 29)).astype(np.float32)
    ref = predict_array(model, image, block=(16, 16))
    got = predict_array(build_model(ckpt), image, block=(16, 16))
    np.testing.assert_array_equal(got, ref)
    # load_checkpoint dispatches: the zip, its unpacked folder, and the folder's rdf.yaml
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path / "unpacked")
    for source in (package, tmp_path / "unpacked", tmp_path / "unpacked" / "rdf.yaml"):
        state = load_checkpoint(source)["model"]["state_dict"]
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_predict_store_with_the_package_equals_the_checkpoint(exported, tmp_path):
    ckpt, _, package, _ = exported
    image = np.random.default_rng(1).random((1, 40, 36)).astype(np.float32)
    write_ome_zarr(tmp_path / "in.ome.zarr", image, axes="cyx", spacing=(0.5, 0.5),
                   unit="micrometer", chunks=(16, 16))
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(unpacked)
    probs = []
    for name, source in (("pt", ckpt), ("zip", package), ("folder", unpacked),
                         ("rdf", unpacked / "rdf.yaml")):
        out = tmp_path / f"{name}.ome.zarr"
        predict_store(source, tmp_path / "in.ome.zarr", out, block=(16, 16),
                      execution=Execution(threads=1, progress=False))
        probs.append(np.asarray(zarr.open_array(os.path.join(out, "0"), mode="r")[...]))
    assert probs[0].shape == (3, 40, 36)
    for other in probs[1:]:
        np.testing.assert_allclose(other, probs[0], atol=1e-6)


def test_torchscript_weights_reproduce_the_model_at_any_valid_size(exported):
    _, model, package, _ = exported
    with zipfile.ZipFile(package) as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")))
    raw = read_npy(package, "test_input.npy")
    x = torch.from_numpy(declared_preprocessing(raw[0], (1.0, 99.8))[None])
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), torch.softmax(model(x), 1).numpy(),
                                   atol=1e-4)
        for shape in [(2, 1, 12, 20), (1, 1, 4, 40)]:  # other sizes and batch
            y = torch.randn(shape)
            got = scripted(y)
            assert got.shape == (shape[0], 3, *shape[2:])
            np.testing.assert_allclose(got.numpy(), torch.softmax(model(y), 1).numpy(),
                                       atol=1e-4)


def test_3d_export(tmp_path):
    pooling = [(1, 2, 2), (2, 2, 2)]
    ckpt, model = tiny_checkpoint(tmp_path / "m3.pt", ndim=3, channels=2, pooling=pooling,
                                  clip=True)
    result = export_model(ckpt, tmp_path / "m3.zip", test_shape=(9, 30, 26), validate=False)
    assert result.test_shape == (8, 28, 24)  # snapped down to the pooling grid (2, 4, 4)
    rdf = rdf_of(tmp_path / "m3.zip")
    sizes = {a["id"]: a["size"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"}
    assert sizes == {"z": {"min": 2, "step": 2}, "y": {"min": 4, "step": 4},
                     "x": {"min": 4, "step": 4}}
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["channel0", "channel1"]
    assert [p["id"] for p in rdf["inputs"][0]["preprocessing"]] == [
        "ensure_dtype", "scale_range", "clip", "ensure_dtype"]
    raw = read_npy(tmp_path / "m3.zip", "test_input.npy")
    assert raw.shape == (1, 2, 8, 28, 24)
    with zipfile.ZipFile(tmp_path / "m3.zip") as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")))
    y = torch.randn(1, 2, 6, 12, 16)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(y).numpy(), torch.softmax(model(y), 1).numpy(),
                                   atol=1e-4)
    image = np.random.default_rng(2).random((2, 6, 20, 12)).astype(np.float32)
    np.testing.assert_array_equal(
        predict_array(build_model(import_model(tmp_path / "m3.zip")), image),
        predict_array(model, image))


def test_test_input_is_a_central_crop_of_the_given_image(exported, tmp_path):
    ckpt = exported[0]
    image = np.random.default_rng(3).integers(0, 4000, (50, 70)).astype(np.uint16)
    write_tiff(tmp_path / "raw.tif", image, axes="yx")
    result = export_model(ckpt, tmp_path / "m.zip", image=tmp_path / "raw.tif",
                          test_shape=(256, 256), validate=False)
    assert result.test_shape == (48, 68)
    raw = read_npy(tmp_path / "m.zip", "test_input.npy")
    np.testing.assert_array_equal(raw[0, 0], image[1:49, 1:69].astype(np.float32))


@pytest.mark.slow
def test_package_validates_with_bioimageio(exported, tmp_path):
    spec = bioimageio_or_skip("bioimageio.spec")
    core = bioimageio_or_skip("bioimageio.core")
    result = export_model(exported[0], tmp_path / "valid.zip", test_shape=(32, 32))
    assert "valid format" in result.validation and "test_model passed" in result.validation
    descr = spec.load_description(tmp_path / "valid.zip", perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format"
    summary = core.test_model(tmp_path / "valid.zip", weight_format="torchscript",
                              devices=["cpu"])
    assert summary.status == "passed"


def test_failed_validation_leaves_nothing(exported, tmp_path, monkeypatch):
    import unetpipe.nn.bioimageio as bio

    def fail(package, weights):
        raise UnetpipeError(f"{package.name}: bioimage.io validation failed: broken")

    monkeypatch.setattr(bio, "_validate", fail)
    with pytest.raises(UnetpipeError, match="validation failed: broken"):
        export_model(exported[0], tmp_path / "bad.zip", test_shape=(16, 16))
    assert os.listdir(tmp_path) == []


def test_valid_padding_is_refused(tmp_path):
    ckpt, _ = tiny_checkpoint(tmp_path / "valid.pt", padding="valid")
    with pytest.raises(InputError, match=r"valid\.pt: the U-Net has padding='valid'; only "
                                         r"padding='same'"):
        export_model(ckpt, tmp_path / "m.zip", validate=False)
    assert not (tmp_path / "m.zip").exists()


def test_packages_not_from_unetpipe_are_refused(tmp_path):
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "format_version": "0.5.4",
                                                "name": "x", "weights": {}}))
    with pytest.raises(InputError, match=r"other\.zip: not a model exported by unetpipe"):
        load_checkpoint(other)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(InputError, match=r"no rdf\.yaml"):
        load_checkpoint(empty)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable zip"):
        load_checkpoint(tmp_path / "junk.zip")


def test_package_without_state_dict_weights_is_refused(exported, tmp_path):
    rdf = rdf_of(exported[2])
    del rdf["weights"]["pytorch_state_dict"]
    (tmp_path / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(InputError, match="no pytorch_state_dict weights"):
        load_checkpoint(tmp_path)


def test_tampered_weights_are_refused(exported, tmp_path):
    package = exported[2]
    tampered = tmp_path / "tampered.zip"
    state = {k: v + 1 if v.is_floating_point() else v
             for k, v in exported[1].state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, buf.getvalue() if name == "weights.pt" else src.read(name))
    with pytest.raises(InputError, match=r"tampered\.zip: the weights file 'weights\.pt' has "
                                         r"sha256 [0-9a-f]{64}, but the description lists"):
        import_model(tampered)


def test_cli_export(exported, tmp_path, caplog):
    out = tmp_path / "cli.zip"
    code = main(["export", os.fspath(exported[0]), os.fspath(out), "--test-shape", "30", "22",
                 "--author", "Ann", "--author", "Bo", "--name", "tiny nuclei",
                 "--weights", "pytorch_state_dict", "--no-validate"])
    assert code == 0 and out.is_file()
    rdf = rdf_of(out)
    assert rdf["name"] == "tiny nuclei" and [a["name"] for a in rdf["authors"]] == ["Ann", "Bo"]
    assert list(rdf["weights"]) == ["pytorch_state_dict"]
    assert read_npy(out, "test_input.npy").shape == (1, 1, 28, 20)
    # unetpipe info reads the package as it reads a checkpoint
    from unetpipe.report.describe import checkpoint_info

    info = checkpoint_info(load_checkpoint(out))
    assert info["bioimageio"]["name"] == "tiny nuclei"
    assert info["architecture"]["parameters"] == sum(
        v.numel() for k, v in load_checkpoint(exported[0])["model"]["state_dict"].items()
        if "running" not in k and "num_batches" not in k)
    # a bad checkpoint: one line, exit status 1
    assert main(["export", os.fspath(tmp_path / "missing.pt"), os.fspath(out),
                 "--no-validate"]) == 1


def test_wrapper_refuses_valid_padding():
    with pytest.raises(ValueError, match="only padding='same'"):
        UNetProbabilities(ndim=2, depth=1, features=2, padding="valid")


def test_without_bioimageio_the_package_is_written_with_a_warning(exported, tmp_path,
                                                                  monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import raises ImportError
    with caplog.at_level("WARNING", logger="unetpipe"):
        result = export_model(exported[0], tmp_path / "m.zip", test_shape=(16, 16))
    assert result.validation == "not validated (bioimageio.spec not installed)"
    assert "was not validated" in caplog.text and (tmp_path / "m.zip").is_file()
    assert import_model(tmp_path / "m.zip")["model"]["config"] == exported[1].config


def test_the_packages_readme_gives_commands_unetpipe_accepts(exported):
    import shlex

    from unetpipe.cli import build_parser

    _, _, package, _ = exported
    with zipfile.ZipFile(package) as zf:
        readme = zf.read("README.md").decode()
    commands = [line for line in readme.splitlines()
                if line.startswith("unetpipe ") and line.split()[1] in ("preprocess", "predict", "segment")]
    assert [c.split()[1] for c in commands] == ["preprocess", "predict", "segment"]
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])  # exits on a bad option
        if args.command == "preprocess":
            assert args.__dict__["cfg:preprocess.percentiles"] == ["1", "99.8"]
