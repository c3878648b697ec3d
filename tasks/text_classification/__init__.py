"""Task family text-classification: ``wordnet`` (offline default) and ``mnli`` (paper scale)."""

from forgetbench.api import hookimpl
from forgetbench_tasks.text_classification.base import ClassificationTask, EncoderClassifier
from forgetbench_tasks.text_classification.mnli import MnliTask
from forgetbench_tasks.text_classification.wordnet import WordnetTask

__all__ = ["ClassificationTask", "EncoderClassifier", "MnliTask", "WordnetTask"]


@hookimpl
def forgetbench_register_tasks(register):
    register(WordnetTask)
    register(MnliTask)
