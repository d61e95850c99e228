"""Test data in the exact on-disk layouts of RFW (images and .bin), insightface .bin and BFW."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import cv2
import numpy as np

# insightface's arcface template (112x112), scaled into the 400x400 RFW photos
_TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]], np.float32)


def face_photo(rng: np.random.Generator, identity: int, size=(400, 400)) -> np.ndarray:
    """A textured BGR picture whose colours depend on the identity (enough for a linear toy model)."""
    h, w = size
    base = np.array([(identity * 53) % 256, (identity * 97) % 256, (identity * 151) % 256], np.float32)
    pattern = 60 * np.outer(np.cos(np.arange(h) / (9 + identity % 3)), np.sin(np.arange(w) / (7 + identity % 5)))
    img = base + pattern[..., None].astype(np.float32) + rng.integers(-20, 21, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def fold_pairs(ids: list[str], images_per_id: int, n_folds: int, per_fold: int = 1):
    """RFW-style pair lines per fold: ``per_fold`` genuine then ``per_fold`` impostor lines."""
    lines = []
    for fold in range(n_folds):
        for j in range(per_fold):
            a = ids[(fold + j) % len(ids)]
            lines.append((a, 1 + fold % images_per_id, 1 + (fold + 1) % images_per_id))
        for j in range(per_fold):
            a, b = ids[(fold + j) % len(ids)], ids[(fold + j + 1) % len(ids)]
            lines.append((a, 1 + j % images_per_id, b, 1 + (fold + j) % images_per_id))
    return lines


def write_rfw(root: Path, races=("African", "Asian"), ids_per_race=4, images_per_id=3, n_folds=10,
              lmk_prefix="./test/data/{race}/", seed=0) -> dict:
    """``root/test/data/<Race>/<id>/<id>_NNNN.jpg`` (400x400), ``root/test/txts/<Race>/<Race>_pairs.txt`` and
    ``_lmk.txt`` (``path label x1 y1 ... x5 y5``). Returns the landmarks and pair lines written."""
    rng = np.random.default_rng(seed)
    info = {"landmarks": {}, "pairs": {}, "images": []}
    identity = 0
    for race in races:
        ids = [f"m.0{race[:2].lower()}{i}x" for i in range(ids_per_race)]
        lmk_lines = []
        for label, ident in enumerate(ids):
            folder = root / "test" / "data" / race / ident
            folder.mkdir(parents=True, exist_ok=True)
            identity += 1
            for n in range(1, images_per_id + 1):
                name = f"{ident}_{n:04d}.jpg"
                (folder / name).write_bytes(jpeg(face_photo(rng, identity)))
                lmk = _TEMPLATE * 2.0 + 88 + rng.normal(0, 2, (5, 2)).astype(np.float32)
                info["landmarks"][(race, ident, n)] = lmk
                info["images"].append(folder / name)
                coords = " ".join(f"{v:.2f}" for v in lmk.reshape(-1))
                prefix = lmk_prefix.format(race=race)
                lmk_lines.append(f"{prefix}{ident}/{name}\t{label}\t{coords}\n")
        txts = root / "test" / "txts" / race
        txts.mkdir(parents=True, exist_ok=True)
        (txts / f"{race}_lmk.txt").write_text("".join(lmk_lines))
        pairs = fold_pairs(ids, images_per_id, n_folds)
        (txts / f"{race}_pairs.txt").write_text("".join("\t".join(map(str, p)) + "\n" for p in pairs))
        info["pairs"][race] = pairs
    return info


def write_bin(path: Path, images: list[np.ndarray], issame, protocol: int = 2, as_numpy=False) -> None:
    """insightface verification .bin: pickle of (list of JPEG bytes, same-person flags)."""
    flags = np.array(issame, dtype=bool) if as_numpy else [bool(v) for v in issame]
    with open(path, "wb") as handle:
        pickle.dump(([jpeg(img) for img in images], flags), handle, protocol=protocol)


def aligned_faces(n: int, seed: int = 0, identities=None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    identities = identities if identities is not None else range(n)
    return [face_photo(rng, int(i), (112, 112)) for i in identities]


BFW_HEADER = ["fold", "p1", "p2", "label", "id1", "id2", "att1", "att2", "vgg16", "resnet50", "senet50",
              "a1", "a2", "g1", "g2", "e1", "e2"]
BFW_GROUPS = {"asian_females": ("AF", "female", "asian"), "black_males": ("BM", "male", "black")}


def write_bfw(root: Path, ids_per_group=3, images_per_id=3, size=(124, 108), seed=0) -> dict:
    """``root/bfw-v0.1.5-datatable.csv`` + ``root/<ethnicity>_<gender>s/n00xxxx/NNNN_NN.jpg`` (5 folds)."""
    rng = np.random.default_rng(seed)
    rows, identity = [], 0
    people = {}
    for att, (abbr, gender, ethnicity) in BFW_GROUPS.items():
        people[att] = []
        for i in range(ids_per_group):
            identity += 1
            pid = f"n00{identity:04d}"
            paths = []
            for n in range(1, images_per_id + 1):
                rel = f"{att}/{pid}/{n:04d}_01.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(jpeg(face_photo(rng, identity, size)))
                paths.append(rel)
            people[att].append((pid, paths))
    for fold in range(1, 6):
        for att, (abbr, gender, ethnicity) in BFW_GROUPS.items():
            plist = people[att]
            pid, paths = plist[fold % len(plist)]
            rows.append([fold, paths[0], paths[1 + fold % (len(paths) - 1)], 1, pid, pid, att, att, 0.5, 0.5, 0.5,
                         abbr, abbr, gender, gender, ethnicity, ethnicity])
            (pa, qa), (pb, qb) = plist[fold % len(plist)], plist[(fold + 1) % len(plist)]
            rows.append([fold, qa[fold % len(qa)], qb[0], 0, pa, pb, att, att, 0.1, 0.1, 0.1,
                         abbr, abbr, gender, gender, ethnicity, ethnicity])
    with open(root / "bfw-v0.1.5-datatable.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BFW_HEADER)
        writer.writerows(rows)
    return {"rows": rows, "people": people}


def tiny_linear_onnx(path, seed: int = 0, emb: int = 16) -> np.ndarray:
    """``data [N,3,112,112] -> Flatten -> MatMul W -> fc1 [N, emb]`` saved at ``path``; returns W (numpy can redo it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(3 * 112 * 112, emb)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", emb])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w
