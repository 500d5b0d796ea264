"""The results page (`steer-eval report`): one self-contained HTML file of one or more runs."""
