"""The report layer: the claims catalogue, verdicts computed from results, the HTML/Markdown
report and `cowlab compare`. Users of the layers below (results), with its figures (report/figures/), used by the CLI."""
