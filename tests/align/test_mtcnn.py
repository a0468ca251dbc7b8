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
    torch.testing.assert_close(area_resize(summed_area_table(imgs), *size), ref, atol=1e-4, rtol=0)


def test_area_crops_equal_the_per_box_loop(imgs):
    rng = np.random.default_rng(0)
    n = 40
    idx = torch.as_tensor(rng.integers(0, 3, n))
    y0, x0 = rng.integers(0, 40, n), rng.integers(0, 30, n)
    y1, x1 = y0 + rng.integers(1, 21, n), x0 + rng.integers(1, 17, n)
    got = area_crops(summed_area_table(imgs), idx, y0, y1, x0, x1, 24, chunk=16)
    for k in range(n):
        crop = imgs[idx[k], :, y0[k] : y1[k], x0[k] : x1[k]][None]
        torch.testing.assert_close(
            got[k], interpolate(crop, (24, 24), mode="area")[0], atol=1e-4, rtol=0
        )


def test_same_faces_as_facenet_pytorch(lfw_root):
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import detect_face
    from PIL import Image

    from face_rec.align.mtcnn import detect_faces

    files = sorted((lfw_root / "images").glob("A*/*.jpg"))[:12]
    batch = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    m = MTCNN(min_face_size=20)
    with torch.no_grad():
        ref_boxes, ref_points = detect_face(
            batch, 20, m.pnet, m.rnet, m.onet, [0.6, 0.7, 0.7], 0.709, "cpu"
        )
    boxes, points = detect_faces(
        torch.as_tensor(batch), 20, m.pnet, m.rnet, m.onet, [0.6, 0.7, 0.7], 0.709
    )
    for rb, rp, b, p in zip(ref_boxes, ref_points, boxes, points, strict=True):
        np.testing.assert_allclose(b, np.asarray(rb, float), atol=1e-3)
        np.testing.assert_allclose(p, np.asarray(rp, float), atol=1e-3)
