"""One archival cycle, composed from the boundaries, in four parts:

* :mod:`.scheduling`: claim due passes, bound what is in flight, stop, record;
* :mod:`.read`: read a pass's details with images, classify and check them;
* :mod:`.plan`: the pure plan of the objects to store (plain, passthrough, age);
* :mod:`.commit`: the commit protocol, objects first and the signed manifest last.
"""

from archiver.pipeline.options import PipelineOptions
from archiver.pipeline.read import DetailsReader
from archiver.pipeline.scheduling import Pipeline, new_run_id

__all__ = ["DetailsReader", "Pipeline", "PipelineOptions", "new_run_id"]
