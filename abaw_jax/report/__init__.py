"""The report of a pipeline run, one module per concern:

stage_files  reading the files the stages wrote (`ReportError` when one is missing or malformed)
bootstrap    intervals over videos from per-video sufficient statistics, and claim verdicts
tables       the markdown tables (and `read_tables`, which parses them back)
claims       the paper's claims, each on two Table 5 cells with a paired interval
figures      the figures
writer       `write_report`, which assembles report.md
check        `check_report`, which recomputes every number, interval and verdict from the stage files (tests)
"""
