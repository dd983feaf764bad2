__version__ = "0.1.0"

from .jobs import keep_sigterm_through_pycolmap

keep_sigterm_through_pycolmap()  # pycolmap's glog would take SIGTERM from the run protocol
