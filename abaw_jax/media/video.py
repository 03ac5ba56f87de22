"""Video file facts shared by every reader of raw videos: the one list of video extensions."""

# In the order a release's video of a given name is looked for (Aff-Wild2 ships mp4 and avi).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
