"""Ray's console noise: what `creagen` printed before issue 13's console work, one pattern each."""

NOISE = (
    "Token authentication is enabled",
    "Progress bars disabled",
    "Requesting resources",
    "Attempting to start training worker group",
    "Started training worker group",
    "Setting up process group",
    "Moving model to device",
    "PreemptionWatcher",
    "core_worker.cc",
    "RayDeprecationWarning",
    "Reporting training result",
    "Checkpoint successfully created",
    "Failed to query Ray Train Controller actor state",
    "placement_group_cleaner",
    "multiple active Ray instances",
    "Traceback",
)
