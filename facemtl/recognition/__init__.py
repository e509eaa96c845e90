"""Open-set identity: the open-set rule an export carries (`open_set`), verification metrics (`metrics`),
threshold calibration (`calibration`), galleries and their stores (`gallery`, `stores`), embedding photos
(`embed`), enrolment and people found in a collection (`enrolment`, `clustering`).

Nothing is imported here: the open-set rule, which exports and presets read, loads without the galleries.
"""
