"""Face detection and alignment: detectors by name (`facemtl.faces.detect.get_detector`), what they return
(`facemtl.faces.detection.Detection`), the alignment to a model's crop (`facemtl.faces.align`), the detector
inside an export's graph (`facemtl.faces.graph`) and `facemtl align` (`facemtl.faces.align_folder`).

Nothing is imported here: `facemtl.faces.detection` (constants and the `Detection` record) loads without
any detector's runtime.
"""
