"""SeqIO registrations: parallel QA training tasks and mixtures, evaluation tasks and mixtures.

Nothing is registered at import: call `register_parallel_qa` / `register_lareqa` (or
`register_lareqa_split`, a split of a registered corpus) / `register_miracl` /
`register_evaluation_mixture` (directly or through gin) with the corpus and SentencePiece model
to use.
"""
from tasks.evaluation import dataset_tasks
from tasks.evaluation import evaluation_dataset_names
from tasks.evaluation import EvaluationMixture
from tasks.evaluation import evaluation_mixture_datasets
from tasks.evaluation import evaluation_mixture_names
from tasks.evaluation import register_evaluation_mixture
from tasks.evaluation import register_lareqa
from tasks.evaluation import register_lareqa_split
from tasks.evaluation import register_miracl
from tasks.evaluation import RetrievalTask
from tasks.evaluation import unregister_evaluation_dataset
from tasks.evaluation import unregister_miracl
from tasks.qa import get_hybrid_mixture
from tasks.qa import get_vocabulary
from tasks.qa import hybrid_mixture_names
from tasks.qa import HybridMixture
from tasks.qa import ParallelQATask
from tasks.qa import register_parallel_qa
from tasks.qa import unregister_parallel_qa
