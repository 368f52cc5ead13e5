"""What a run writes for people: the log (console and ``train.log``), ``summary.csv`` and the curve plot."""
import csv
import logging
import os
import sys
from typing import Optional

from tqdm import tqdm

from .checkpoint import write_atomic

SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")
EMA_COLUMNS = ("ema_eval_loss", "ema_eval_top1", "ema_eval_top5")
LOGGER_NAME = "vssm.engine"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def setup_logging(log_file: Optional[str], is_main: bool) -> logging.Logger:
    """The engine's logger: rank 0 logs INFO to the console and to ``log_file``; other ranks only warnings."""
    logger = logging.getLogger(LOGGER_NAME)
    close_logging(logger)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file and is_main:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def log_to_file(logger: logging.Logger, message: str) -> None:
    """Append ``message`` to the logger's files only (the console has it from the caller)."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord(logger.name, logging.ERROR, __file__, 0, message, None, None))


def close_logging(logger: logging.Logger) -> None:
    """Detach and close the logger's handlers (so a later run in the same process starts clean)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def read_summary(path: str) -> list[dict]:
    """Rows of ``summary.csv`` (values as strings); [] if there is none."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def write_summary(path: str, rows: list[dict], with_ema: bool) -> None:
    """Rewrite ``summary.csv`` atomically with ``rows`` (one per epoch; timm's columns, plus the EMA's when on)."""
    columns = SUMMARY_COLUMNS + (EMA_COLUMNS if with_ema else ())

    def write(file):
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write, "w", newline="")


def plot_curves(rows: list[dict], path: str) -> None:
    """Loss and top-1/top-5 accuracy per epoch, side by side, into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) for row in rows]

    def series(column):
        return [float(row[column]) for row in rows if row.get(column) not in (None, "")]

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for column, label in (("train_loss", "train"), ("eval_loss", "eval"), ("ema_eval_loss", "eval (EMA)")):
        if series(column):
            loss_axes.plot(epochs, series(column), marker=".", label=label)
    for column, label in (("eval_top1", "top-1"), ("eval_top5", "top-5"), ("ema_eval_top1", "top-1 (EMA)")):
        if series(column):
            accuracy_axes.plot(epochs, series(column), marker=".", label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def format_duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
