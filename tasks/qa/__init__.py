"""Task family ``qa``: extractive question answering (SQuAD-style spans).

- ``wordnet-qa`` (offline): templated questions over real WordNet 3.0 sense inventories,
  all-MiniLM-L6-v2; nouns in stage 0, verbs as the new task.
- ``squad`` (paper scale): SQuAD v1.1 prior, COVID-QA new, bert-base-uncased.

See docs/tasks_qa.md.
"""

from forgetbench.api import hookimpl

from .base import SpanQATask
from .squad import SquadTask
from .wordnet import WordnetQATask

__all__ = ["SpanQATask", "SquadTask", "WordnetQATask"]


@hookimpl
def forgetbench_register_tasks(register):
    register(WordnetQATask)
    register(SquadTask)
