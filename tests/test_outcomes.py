"""What each launch.py mode prints at its end (``lclmt_jax.outcomes``): the answer, the files, the
next command. Content, not layout: each expected value is read back from the run's own files."""

import json
import os

import pytest

from lclmt_jax import console, outcomes, run_files

TABLE = [['clean accuracy', 'clean_accuracy'], ['sound L', 'lipschitz_sound'],
         ['certified (pairwise)', 'certified_pairwise@{eps}'], ['CW-L2 attack', 'attack@{eps}'],
         ['broken certificates (must be 0)', 'broken_certificates'],
         ['points attacked', 'attack_examples']]

pytestmark = pytest.mark.fast


def _summary(epsilons):
    """An evaluation summary as the certificates and cw_l2 evaluators write it."""
    summary = {'clean_accuracy': 0.8125, 'num_examples': 1000, 'lipschitz_sound': 3.25,
               'broken_certificates': 0, 'attack_examples': 200, 'table': TABLE}
    for k, eps in enumerate(epsilons):
        summary[f'certified_pairwise@{eps:g}'] = 0.7 - 0.1 * k
        summary[f'attack@{eps:g}'] = 0.75 - 0.1 * k
    return summary


def test_training_ends_with_accuracy_files_and_the_evaluate_command(trained_workdir, capsys):
    outcomes.after_training(trained_workdir)
    out = capsys.readouterr().out
    records = run_files.read_metrics(trained_workdir)
    last = records[-1]
    seconds = sum(record['epoch_seconds'] for record in records)
    assert f'trained {last["epoch"]} epochs in {seconds:.0f} s' in out
    assert f'test accuracy {console.cell(last["test_accuracy"])}' in out
    assert f'train {console.cell(last["train_accuracy"])}' in out
    assert os.path.abspath(trained_workdir) in out and 'metrics.jsonl' in out
    assert (f'next: python launch.py --mode=evaluate --workdir='
            f'{os.path.abspath(trained_workdir)} --attack_examples=200') in out


def test_an_evaluated_training_adds_its_certified_table_and_the_compare_command(
        trained_workdir, capsys):
    epsilons = run_files.load_config(trained_workdir).evaluation.epsilons
    summary = _summary(epsilons)
    outcomes.after_training(trained_workdir, evaluating=True)
    assert 'next:' not in capsys.readouterr().out  # the evaluation's lines end with it
    outcomes.after_evaluation(trained_workdir, summary)
    out = capsys.readouterr().out
    assert '1000 test points: clean accuracy 0.8125; sound L 3.2500' in out
    for k, eps in enumerate(epsilons):
        row = next(line for line in out.splitlines() if line.split()[:1] == [f'{eps:g}'])
        assert console.cell(0.7 - 0.1 * k) in row and console.cell(0.75 - 0.1 * k) in row
    assert 'broken certificates (must be 0) 0; points attacked 200' in out
    assert 'next: python launch.py --mode=compare' in out


def test_evaluate_prints_every_radius_with_certificate_and_attack(trained_workdir, capsys):
    epsilons = run_files.load_config(trained_workdir).evaluation.epsilons
    summary = _summary(epsilons)
    summary['broken_certificates'] = 2
    outcomes.after_evaluation(trained_workdir, summary)
    out = capsys.readouterr().out
    assert 'certified (pairwise)' in out and 'CW-L2 attack' in out
    assert sum(line.split()[:1] in ([f'{eps:g}'] for eps in epsilons)
               for line in out.splitlines()) == len(epsilons)
    assert 'broken certificates (must be 0) 2' in out


def test_compare_prints_the_table_it_wrote(trained_workdir, tmp_path, capsys):
    epsilons = run_files.load_config(trained_workdir).evaluation.epsilons
    table = [{'workdir': trained_workdir, 'run': 'lc_lmt_pairwise', 'epochs': 3,
              'train_accuracy': 0.5, 'test_accuracy': 0.625,
              **{f'certified_pairwise@{eps:g}': 0.375 for eps in epsilons},
              'first_epoch_meeting_bound': None}]
    (tmp_path / 'comparison.json').write_text(json.dumps(table))
    (tmp_path / 'fig1a_margins.png').write_bytes(b'')
    outcomes.after_comparison(str(tmp_path), [trained_workdir], table)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines()
               if line.startswith(os.path.basename(trained_workdir)))
    assert '0.6250' in row and '0.3750' in row and 'lc_lmt_pairwise' in row
    assert all(f'cert@{eps:g}' in out for eps in epsilons)
    assert 'comparison.json' in out and 'fig1a_margins.png' in out


@pytest.mark.parametrize('evaluated', [False, True])
def test_next_command_names_the_workdir(evaluated):
    line = outcomes.next_command('/runs/a', evaluated)
    assert '/runs/a' in line and ('--mode=compare' if evaluated else '--mode=evaluate') in line


def test_evaluator_settings_for_one_evaluation_are_checked_and_leave_the_config_alone():
    from lclmt_jax import assessment, config_schema

    config = config_schema.default_config()
    changed = assessment.with_evaluator_settings(config, ['cw_l2.steps=7', 'cw_l2.batch_size=64'])
    assert (changed.evals.cw_l2.steps, changed.evals.cw_l2.batch_size) == (7, 64)
    assert config.evals.cw_l2.steps != 7  # the run's own config is not touched
    with pytest.raises(ValueError, match="did you mean 'evals.cw_l2.steps'"):
        assessment.with_evaluator_settings(config, ['cw_l2.stepz=7'])
    with pytest.raises(ValueError, match='NAME.FIELD=VALUE'):
        assessment.with_evaluator_settings(config, ['steps=7'])
    with pytest.raises(ValueError, match='--eval_setting'):
        assessment.with_evaluator_settings(config, ["cw_l2.steps='many'"])


def test_a_model_without_a_float32_analysis_shows_its_exact_certificates(trained_workdir,
                                                                          capsys):
    epsilons = run_files.load_config(trained_workdir).evaluation.epsilons
    summary = {f'certified_exact_pairwise@{eps:g}': 0.625 for eps in epsilons}
    table = [['clean accuracy', 'clean_accuracy'],
             ['certified (pairwise, exact arithmetic)', 'certified_exact_pairwise@{eps}']]
    outcomes.after_evaluation(trained_workdir, {'clean_accuracy': 0.75, **summary,
                                                'table': table})
    out = capsys.readouterr().out
    assert 'certified (pairwise, exact arithmetic)' in out
    assert out.count('0.6250') == len(epsilons)


def test_the_table_prints_what_the_evaluators_declare_and_nothing_else(trained_workdir,
                                                                       capsys):
    """A figure reaches the table by its evaluator's declaration alone: an undeclared scalar
    stays in evaluation.json, a declared one of any name is printed with its label."""
    epsilons = run_files.load_config(trained_workdir).evaluation.epsilons
    summary = {'num_examples': 10, 'clean_accuracy': 0.5, 'pgd_steps': 40,
               **{f'pgd@{eps:g}': 0.125 for eps in epsilons},
               'table': [['PGD attack', 'pgd@{eps}'], ['steps', 'pgd_steps']]}
    outcomes.after_evaluation(trained_workdir, summary)
    out = capsys.readouterr().out
    assert '10 test points: steps 40' in out and 'PGD attack' in out
    assert out.count('0.1250') == len(epsilons) and 'clean accuracy' not in out
