"""Dataset generation: the documented recipe at scale, written as the seed layout or as shards.

The pieces, in data-flow order:

- :mod:`~losslab.core.data.generate.plan` - what to make (sources, generator, ground truth, layout) and
  the recipe list, checked before any work starts;
- :mod:`~losslab.core.data.formats` - file names, encoders and decoders shared by writers and readers;
- :mod:`~losslab.core.data.generate.layouts` - the writers: one chunk of recipes in, files out;
- :mod:`~losslab.core.data.generate.shards` - the shards writer and its format;
- :mod:`~losslab.core.data.generate.resume` - which chunks are complete, so a killed run continues;
- :mod:`~losslab.core.data.generate.pipeline` - worker processes, the progress bar, interruption;
- :mod:`~losslab.core.data.dataset_stats` - ``lab data stats``.

Readers live in :mod:`losslab.core.data.readers`.
"""

from losslab.core.data.generate.pipeline import GenerationInterrupted, GenerationReport, generate
from losslab.core.data.generate.plan import GenerationError, GenerationPlan, InputSpec

__all__ = [
    "GenerationError",
    "GenerationInterrupted",
    "GenerationPlan",
    "GenerationReport",
    "InputSpec",
    "generate",
]
