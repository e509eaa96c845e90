"""Label vocabularies shared by the models, data readers and exports."""

# FER2013's label order (emotion column 0..6). Everything that maps an
# expression index to a name goes through this tuple.
EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Marks "this sample has no label for this task" in merged datasets.
IGNORE_LABEL = -1
