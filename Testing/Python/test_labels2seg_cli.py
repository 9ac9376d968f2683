"""The headless demo command writes a real case as a .seg.nrrd and checks it."""

from __future__ import annotations

from conftest import hippocampus_paths
from EfficientSegmentationCommon.labels2seg import main


def test_writes_segmentation_file_and_reports_it(tmp_path, capsys):
    image, labels = hippocampus_paths("hippocampus_001")
    assert main([str(image), str(labels), "--output-dir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    written = tmp_path / "hippocampus_001.seg.nrrd"
    assert written.is_file() and written.stat().st_size > 0
    assert f"Wrote {written}" in output
    assert "segment 'anterior hippocampus' (label 1" in output
    assert "segment 'posterior hippocampus' (label 2" in output
    assert "round trip segmentation -> label map identical: True" in output


def test_reports_unreadable_input(tmp_path, capsys):
    image, _ = hippocampus_paths("hippocampus_001")
    assert main([str(image), str(tmp_path / "missing.nii.gz"), "--output-dir", str(tmp_path)]) == 2
    assert "missing.nii.gz': no such file" in capsys.readouterr().err
