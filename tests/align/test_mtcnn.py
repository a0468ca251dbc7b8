import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from face_rec.align.mtcnn import area_crops, area_resize, summed_area_table


@pytest.fixture
def imgs():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 61, 47), generator=g).float()


@pytest.mark.parametrize("size", [(24, 24), (20, 13), (61, 47), (100, 90)])
def test_area_resize_equals_torch_area_interpolation(imgs, size):
    ref = interpolate(imgs, size=size, mode="area")
    torch.testing.assert_close(
        area_resize(summed_area_table(imgs.permute(0, 2, 3, 1)), *size), ref, atol=1e-4, rtol=0
    )


def test_area_crops_equal_the_per_box_loop(imgs):
    rng = np.random.default_rng(0)
    n = 40
    idx = torch.as_tensor(rng.integers(0, 3, n))
    y0, x0 = rng.integers(0, 40, n), rng.integers(0, 30, n)
    y1, x1 = y0 + rng.integers(1, 21, n), x0 + rng.integers(1, 17, n)
    got = area_crops(summed_area_table(imgs.permute(0, 2, 3, 1)), idx, y0, y1, x0, x1, 24, chunk=16)
    for k in range(n):
        crop = imgs[idx[k], :, y0[k] : y1[k], x0[k] : x1[k]][None]
        torch.testing.assert_close(
            got[k], interpolate(crop, (24, 24), mode="area")[0], atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("dataset, min_face", [("lfw", 20), ("celeba299", 16)])
def test_same_faces_as_facenet_pytorch(data_root, dataset, min_face):
    """Our cascade with FaceDetector's networks (channels_last, PNet widened, sliced batches)
    finds the boxes and landmarks of facenet-pytorch's ``detect_face`` on real photos."""
    from facenet_pytorch.models.utils.detect_face import detect_face
    from PIL import Image

    from face_rec.align.detect import FaceDetector
    from face_rec.align.mtcnn import detect_faces

    root = data_root / dataset / "images"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    files = sorted(root.glob("*/*.jpg"))[:200:10]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    h, w = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    batch = np.zeros((len(images), h, w, 3), np.uint8)  # padded like FaceDetector.detect
    for k, img in enumerate(images):
        batch[k, : img.shape[0], : img.shape[1]] = img
    detector = FaceDetector(min_face_size=min_face)
    m = detector.mtcnn
    with torch.no_grad():
        ref_boxes, ref_points = detect_face(
            batch, min_face, m.pnet, m.rnet, m.onet, [0.6, 0.7, 0.7], 0.709, "cpu"
        )
    boxes, points = detect_faces(
        torch.as_tensor(batch), min_face, *detector.nets, [0.6, 0.7, 0.7], 0.709
    )
    assert sum(len(b) for b in boxes) >= len(files)
    for rb, rp, b, p in zip(ref_boxes, ref_points, boxes, points, strict=True):
        np.testing.assert_allclose(b, np.asarray(rb, float).reshape(-1, 5), atol=1e-3)
        np.testing.assert_allclose(p, np.asarray(rp, float).reshape(-1, 5, 2), atol=1e-3)


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_widened_network_gives_the_same_outputs(name):
    from facenet_pytorch import MTCNN

    from face_rec.align.mtcnn import widen_first_layer

    net = getattr(MTCNN(), name).eval()
    wide = widen_first_layer(net)
    assert wide.conv1.out_channels % 16 == 0 and wide.conv2.in_channels % 16 == 0
    assert net.conv1.out_channels in (10, 28, 32)  # the original is left as it was
    side = {"pnet": 37, "rnet": 24, "onet": 48}[name]
    x = torch.randn(5, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, ref in zip(wide(x), net(x), strict=True):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_networks_run_in_slices_give_the_whole_batch_outputs():
    from facenet_pytorch import MTCNN

    from face_rec.align.mtcnn import _forward

    rnet = MTCNN().rnet.eval()
    x = torch.randn(37, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = rnet(x)
        sliced = _forward(rnet, x, pixels=5 * 24 * 24)  # slices of 5 boxes, the last of 2
    assert len(sliced) == len(whole) == 2
    for got, ref in zip(sliced, whole, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
