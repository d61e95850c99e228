"""BFW datatable and images: layout, image roots, errors."""
import numpy as np
import pytest

from eval_fixtures import write_bfw
from fpr_plugin.eval.sets import bfw


def test_bfw_layout(bfw_dir):
    root, info = bfw_dir
    s = bfw.load_bfw(root)
    assert s.name == "bfw" and s.pairs.pairs.shape == (20, 2)
    assert list(dict.fromkeys(s.pairs.groups)) == ["AF", "BM"]
    np.testing.assert_array_equal(s.pairs.folds, np.repeat([1, 2, 3, 4, 5], 4))
    for (a, b), row, same in zip(s.pairs.pairs, info["rows"], s.pairs.issame):
        assert s.images.sources[a] == root / row[1] and s.images.sources[b] == root / row[2]
        assert same == bool(row[3])
    assert set(s.image_groups) == {"AF", "BM"}
    img = s.images.load([0])[0]
    assert img.shape == (112, 112, 3) and s.images.resized_from == {(124, 108)}


def test_bfw_table_given_directly_and_images_in_cropped_folder(tmp_path):
    root = tmp_path / "bfw"
    write_bfw(root / "bfw-cropped-aligned")
    (root / "bfw-cropped-aligned" / "bfw-v0.1.5-datatable.csv").rename(root / "bfw-v0.1.5-datatable.csv")
    s = bfw.load_bfw(root / "bfw-v0.1.5-datatable.csv")
    assert s.images.sources[0].parent.parent.parent.name == "bfw-cropped-aligned"


def test_bfw_missing_image_names_table_and_line(bfw_dir):
    root, info = bfw_dir
    (root / info["rows"][6][2]).unlink()
    first_use = next(i for i, r in enumerate(info["rows"]) if info["rows"][6][2] in (r[1], r[2]))
    with pytest.raises(FileNotFoundError, match=rf"datatable.csv:{first_use + 2}: image .* not found"):
        bfw.load_bfw(root)


def test_bfw_bad_label(bfw_dir):
    root, _ = bfw_dir
    table = root / "bfw-v0.1.5-datatable.csv"
    lines = table.read_text().splitlines()
    fields = lines[3].split(",")
    fields[3] = "maybe"
    lines[3] = ",".join(fields)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"datatable.csv:4: column 'label' must be 1/0"):
        bfw.load_bfw(root)
