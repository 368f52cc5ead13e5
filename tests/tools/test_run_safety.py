"""A run loses nothing and writes nothing wrong: atomic writes, the work-dir lock, non-finite losses, outputs repaired
from last.pth on resume, a finished run resumed."""
import errno
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from vssm.engine import UserError, load_config, train
from vssm.engine.checkpoint import write_atomic
from vssm.engine.workdir import LOCK_NAME, WorkDirLock

from .helpers import REPO, load_tool, read_rows, subprocess_env, tiny_config, write_config


def run_tool(capsys, tool: str, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = load_tool(tool).main(argv)
    return status, capsys.readouterr().err


def test_write_atomic_gives_concurrent_writers_their_own_temporary_files(tmp_path):
    path = tmp_path / "last.pth"

    def outer(file):
        file.write(b"outer-1 ")
        write_atomic(str(path), lambda inner: inner.write(b"inner, complete"))  # a second writer meanwhile
        file.write(b"outer-2")

    write_atomic(str(path), outer)
    assert path.read_bytes() == b"outer-1 outer-2"  # one writer's whole content, not a mix
    assert os.listdir(tmp_path) == ["last.pth"]


def test_write_atomic_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "last.pth"
    link.symlink_to(target)
    write_atomic(str(link), lambda file: file.write(b"checkpoint"))
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and link.read_bytes() == b"checkpoint"


def test_write_atomic_removes_its_temporary_file_on_failure(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("old")

    def failing(file):
        file.write("partial")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        write_atomic(str(path), failing, "w")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.csv"]


def test_full_disk_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "last.pth"

    def fills_the_disk(file):
        file.write(b"x" * 3 * 2 ** 20)
        file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError) as caught:
        write_atomic(str(path), fills_the_disk)
    message = str(caught.value)
    assert "\n" not in message and f"cannot write {path}" in message and "no space left" in message
    assert "3.0 MiB written" in message
    assert os.listdir(tmp_path) == []  # the partial file does not keep the disk full


def test_work_dir_lock_refuses_a_second_run_and_is_taken_over_from_a_dead_one(tmp_path):
    work_dir = tmp_path / "run"
    first = WorkDirLock(str(work_dir)).acquire()
    with pytest.raises(UserError, match=rf"work dir {work_dir} is in use by another run \(pid {os.getpid()} on"):
        WorkDirLock(str(work_dir)).acquire()
    first.release()
    assert not work_dir.exists()  # nothing but the lock was there

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from vssm.engine.workdir import WorkDirLock
        WorkDirLock({str(work_dir)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            WorkDirLock(str(work_dir)).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind
        holder.wait()
    assert (work_dir / LOCK_NAME).exists()
    WorkDirLock(str(work_dir)).acquire().release()  # the dead run's lock is taken over


def test_training_in_a_locked_work_dir_fails_at_once(tmp_path, capsys, image_root):
    config = write_config(tmp_path, tiny_config(image_root))
    work_dir = tmp_path / "run"
    lock = WorkDirLock(str(work_dir)).acquire()
    try:
        status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir)])
    finally:
        lock.release()
    assert status == 2 and f"work dir {work_dir} is in use by another run (pid {os.getpid()}" in err


def test_non_finite_loss_stops_the_run_and_writes_nothing(tmp_path, capsys, image_root):
    config = write_config(tmp_path, tiny_config(image_root, epochs=2))
    work_dir = tmp_path / "run"
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--cfg-options",
                                             "optimizer.lr=1e9", "log_interval=1"])
    assert status == 2
    line = err.strip().splitlines()[-1]
    assert re.search(r"loss became non-finite at epoch 1 step \d+ \(update \d+\), learning rate [0-9.]+e\+0[89];", line)
    assert not (work_dir / "last.pth").exists() and not (work_dir / "best.pth").exists()
    assert line[len("error: "):] in (work_dir / "train.log").read_text()  # the reason is in the log too


class _NaNOnSecondCall(torch.nn.CrossEntropyLoss):
    calls = 0

    def forward(self, logits, targets):
        type(self).calls += 1
        loss = super().forward(logits, targets)
        return loss * float("nan") if type(self).calls == 2 else loss


def test_skip_policy_skips_and_counts_non_finite_steps(tmp_path, image_root, monkeypatch):
    import vssm.engine.trainer as trainer

    monkeypatch.setattr(trainer.nn, "CrossEntropyLoss", _NaNOnSecondCall)
    _NaNOnSecondCall.calls = 0
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, nonfinite="'skip'")))
    result = train(cfg, str(tmp_path / "run"))
    assert result["skipped_steps"] == 1
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert checkpoint["num_updates"] == 5  # 6 batches, one skipped
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert "skipped 1 step(s) with a non-finite loss" in (tmp_path / "run" / "train.log").read_text()


def test_resume_repairs_outputs_behind_last_pth_and_says_a_finished_run_is_complete(tmp_path, capsys, image_root):
    """A crash between an epoch's writes leaves summary.csv, the curves and best.pth behind last.pth: resuming
    rebuilds them from last.pth; resuming a finished run trains nothing and says so."""
    config = write_config(tmp_path, tiny_config(image_root))
    work_dir = tmp_path / "run"
    assert run_tool(capsys, "train", [config, "--work-dir", str(work_dir)])[0] == 0
    rows = read_rows(work_dir / "summary.csv")
    best = torch.load(work_dir / "best.pth", weights_only=True)
    (work_dir / "summary.csv").write_text("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n")
    (work_dir / "curves.png").unlink()
    (work_dir / "best.pth").unlink()

    assert run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--resume"])[0] == 0
    assert read_rows(work_dir / "summary.csv") == rows and (work_dir / "curves.png").is_file()
    repaired = torch.load(work_dir / "best.pth", weights_only=True)
    assert repaired["epoch"] == best["epoch"] == 1
    assert all(torch.equal(repaired["model"][k], v) for k, v in best["model"].items())
    log = (work_dir / "train.log").read_text()
    assert "rebuilt" in log and "is complete: 1 of 1 epochs done, nothing to train" in log


def test_sigterm_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, image_root):
    """A real process sends itself SIGTERM after its 4th update (mid-epoch 1 of 2): it finishes the step, writes a
    resumable last.pth, prints one line and exits 143; --resume then ends with the uninterrupted run's weights."""
    config = write_config(tmp_path, tiny_config(image_root, epochs=2, model="dict(name='test_vmamba', "
                                                "drop_path_rate=0.2)", augment="dict(re_prob=0.5)"))
    straight = tmp_path / "straight"
    assert load_tool("train").main([config, "--work-dir", str(straight)]) == 0

    interrupted = tmp_path / "interrupted"
    script = textwrap.dedent(f"""\
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tools')!r})
        import train
        from vssm.engine import trainer
        step = trainer._Trainer._optimizer_step
        def step_then_signal(self):
            step(self)
            if self.num_updates == 4:
                os.kill(os.getpid(), signal.SIGTERM)
        trainer._Trainer._optimizer_step = step_then_signal
        sys.exit(train.main({[config, '--work-dir', str(interrupted)]!r}))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            timeout=600)
    assert result.returncode == 128 + 15, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"stopped by SIGTERM at epoch 1 step 4/6; wrote "
                                                      f"{interrupted / 'last.pth'}, continue with --resume")
    partial = torch.load(interrupted / "last.pth", weights_only=True)
    assert partial["epoch"] == 0 and partial["epoch_progress"]["steps"] == 4 and partial["num_updates"] == 4

    assert load_tool("train").main([config, "--work-dir", str(interrupted), "--resume"]) == 0
    expected = torch.load(straight / "last.pth", weights_only=True)
    resumed = torch.load(interrupted / "last.pth", weights_only=True)
    assert resumed["num_updates"] == expected["num_updates"] == 12
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert read_rows(interrupted / "summary.csv") == read_rows(straight / "summary.csv")


def test_kill_between_an_epochs_writes_then_resume_repairs_the_outputs(tmp_path, image_root):
    """A real process is killed (SIGKILL, no clean-up) right after its one epoch's last.pth is written, before
    best.pth, summary.csv and the curves follow: --resume rebuilds them from last.pth and says the run is complete."""
    config = write_config(tmp_path, tiny_config(image_root))
    work_dir = tmp_path / "run"
    script = textwrap.dedent(f"""\
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tools')!r})
        import train
        from vssm.engine import checkpoint
        save = checkpoint.save_atomic
        def save_then_die(state, path):
            save(state, path)
            if path.endswith("last.pth"):
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save_atomic = save_then_die
        sys.exit(train.main({[config, '--work-dir', str(work_dir)]!r}))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            timeout=600)
    assert result.returncode == -9, result.stderr
    last = torch.load(work_dir / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and last["best"]["epoch"] == 1
    assert not (work_dir / "best.pth").exists() and not (work_dir / "summary.csv").exists()

    assert load_tool("train").main([config, "--work-dir", str(work_dir), "--resume"]) == 0
    assert [row["epoch"] for row in read_rows(work_dir / "summary.csv")] == ["1"]
    assert (work_dir / "curves.png").is_file()
    best = torch.load(work_dir / "best.pth", weights_only=True)
    assert best["epoch"] == 1 and all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
    assert "is complete: 1 of 1 epochs done" in (work_dir / "train.log").read_text()
