"""bench/overhead.py's statistics for telling a real change from noise: the
distribution-free confidence interval of the median per-pair ratio, the sign test and the
quartiles, against values worked out by hand from the binomial distribution."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.environ.get('HEAPPROF_SOURCE_ROOT',
                                               os.path.join(os.path.dirname(__file__), '..',
                                                            '..')), 'bench'))
import overhead  # noqa: E402


class MedianInterval(unittest.TestCase):

    def test_fifteen_pairs_use_the_4th_and_12th_ratio(self):
        # P(Binomial(15, 1/2) <= 3) = 576/32768 = 0.0176 <= 0.025 < P(<= 4) = 0.0592.
        ratios = [1.0 + i / 100 for i in (9, 3, 14, 0, 7, 12, 1, 5, 10, 2, 13, 6, 11, 4, 8)]
        self.assertEqual(overhead.median_ci(ratios), (1.03, 1.11))

    def test_the_interval_holds_at_least_its_level(self):
        for n in range(6, 60):
            s = list(range(n))
            low, high = overhead.median_ci(s)
            k = low + 1                       # low is the k-th smallest
            self.assertEqual(high, n - k)     # and high the k-th largest
            self.assertLessEqual(overhead.binom_cdf(k - 1, n), 0.025, n)
            self.assertGreater(overhead.binom_cdf(k, n), 0.025, n)   # and k is the largest

    def test_no_interval_below_six_pairs(self):
        # Even min..max covers only 1 - 2/32 = 93.75% with five pairs.
        self.assertIsNone(overhead.median_ci([1.0, 1.1, 0.9, 1.2, 1.05]))
        self.assertIsNotNone(overhead.median_ci([1.0, 1.1, 0.9, 1.2, 1.05, 1.0]))


class SignTest(unittest.TestCase):

    def test_twelve_of_fifteen_slower(self):
        up, n, p = overhead.sign_test([1.1] * 12 + [0.9] * 3)
        self.assertEqual((up, n), (12, 15))
        self.assertAlmostEqual(p, 2 * (1 + 15 + 105 + 455) / 32768)

    def test_ties_count_for_neither_side(self):
        up, n, p = overhead.sign_test([1.0, 1.0, 1.2, 0.8])
        self.assertEqual((up, n, p), (1, 2, 1.0))

    def test_all_ties(self):
        self.assertEqual(overhead.sign_test([1.0, 1.0]), (0, 0, 1.0))


class Verdict(unittest.TestCase):
    # Fifteen ratios: the CI is the 4th smallest and the 4th largest.

    def ratios(self, low, median, high):
        return [low - 0.01] * 3 + [low] + [median] * 7 + [high] + [high + 0.01] * 3

    def test_a_ci_at_or_under_the_target_is_met(self):
        self.assertEqual(overhead.verdict(self.ratios(0.99, 1.01, 1.02), 1.02), 'met')

    def test_a_ci_above_the_target_is_over(self):
        self.assertEqual(overhead.verdict(self.ratios(1.021, 1.03, 1.05), 1.02), 'over')

    def test_a_ci_across_the_target_cannot_tell(self):
        self.assertEqual(overhead.verdict(self.ratios(0.98, 1.015, 1.045), 1.02),
                         'under?..1.045')
        self.assertEqual(overhead.verdict(self.ratios(1.005, 1.03, 1.06), 1.02),
                         'over?1.005..')

    def test_no_verdict_below_six_pairs(self):
        self.assertEqual(overhead.verdict([1.0, 1.0, 1.0, 1.0, 1.0], 1.02), '-')


class Quartiles(unittest.TestCase):

    def test_inclusive_quartiles(self):
        self.assertEqual(overhead.quartiles([5, 1, 4, 2, 3]), (2.0, 4.0))
        self.assertEqual(overhead.quartiles([7]), (7, 7))


if __name__ == '__main__':
    unittest.main()
