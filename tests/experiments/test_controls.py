"""Issue 25's controls: baselines also trained on the meta set, and
AutoAttack on every row, sharing each noise / long-tail table's runs."""

import pytest

from caat_jax import data
from caat_jax.experiments import controls, registry, runner


@pytest.mark.parametrize("n", controls.TABLES)
def test_controls_share_the_tables_runs_and_add_only_the_meta_set(n, tmp_path):
  table = registry.get(f"digits_table{n}")
  exp = registry.get(f"digits_table{n}_controls")
  assert exp.reference == "meta-caat-grad-select" and exp.overrides == table.overrides
  assert exp.attacks == table.attacks and exp.seeds == table.seeds
  work = str(tmp_path)
  for row in exp.rows:
    if row.name.endswith("+meta"):
      base = table.row(row.name[: -len("+meta")])
      assert row.overrides == base.overrides + (controls.META_IN_TRAIN,)
      assert row.config == base.config
    else:  # the table's own row: the same run directory and settings, so it is reused
      assert row == table.row(row.name)
      assert runner.spec(exp, row, 0, work) == runner.spec(table, row, 0, work)
  assert {r.name for r in exp.rows} == {
    *controls.BASELINES,
    *(f"{b}+meta" for b in controls.BASELINES),
    "meta-caat-grad",
    "meta-caat-grad-select",
  }
  assert exp.row(exp.reference).select is not None  # the paper's λ protocol


def test_a_meta_row_trains_on_the_meta_set_too(tmp_path):
  exp = registry.get("digits_table6_controls")
  plain, control = (
    runner.build_config(runner.spec(exp, exp.row(name), 0, str(tmp_path)))
    for name in ("trades-b6", "trades-b6+meta")
  )
  assert not plain.data.meta_in_train and control.data.meta_in_train
  a, b = data.load_dataset(plain.data), data.load_dataset(control.data)
  assert a.train.corrupted.mean() > 0.3  # table 6: 40% uniform noise
  assert len(b.train) == len(a.train) + len(a.meta) and not b.train.corrupted[len(a.train) :].any()


@pytest.mark.parametrize("n", controls.TABLES)
def test_autoattack_on_every_row_of_the_table(n):
  table = registry.get(f"digits_table{n}")
  exp = registry.get(f"digits_table{n}_autoattack")
  assert exp.rows == table.rows and exp.overrides == table.overrides
  assert exp.attacks == ("autoattack",) and exp.eval_examples == 0  # the whole test split
  assert exp.seeds == table.seeds
