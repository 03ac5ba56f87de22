"""The predictor bundle (bundle.py) and the predictor that runs it on face tracks (predictor.py)."""
