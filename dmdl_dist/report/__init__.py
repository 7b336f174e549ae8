"""What a person looks at after a run: curves, ranked lists, the modality gap, TensorBoard, report.md.

Modules, each with one job:
  files       atomic text and PNG writes
  history     metrics.jsonl -> epoch records and flat scalars
  curves      per-epoch PNGs (losses, clusters/outliers, association, validation)
  ranked      ranked-list figure: each query and its top gallery images, framed green/red
  features    test-time features for the pictures, leaving the training's random state alone
  gap         modality-gap snapshots (features of a few test ids) and the distances that measure the gap
  gap_plot    the t-SNE picture of the snapshots
  tb          TensorBoard scalar events
  environment library versions and devices, for reproducing a run
  markdown    Markdown tables of metrics, phases and epochs
  report      write_report (a run folder) and write_table_report (ablation, tune)
  commands    the `dmdl report` subcommand

Nothing is imported here, so `import dmdl_dist.report` stays cheap and side-effect free.
"""
