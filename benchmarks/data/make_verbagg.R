# Writes benchmarks/data/verbagg.csv.gz (lme4's VerbAgg, the columns the benchmark uses) and
# benchmarks/data/lme4_verbagg_bernoulli.json (glmer's Laplace fit of the benchmark's model: the reference).
# Run from the repository root: Rscript benchmarks/data/make_verbagg.R
suppressPackageStartupMessages(library(lme4))
library(jsonlite)
d <- VerbAgg[, c("r2", "Anger", "Gender", "btype", "situ", "id", "item")]
d$r2 <- as.integer(d$r2 == "Y")
out <- gzfile("benchmarks/data/verbagg.csv.gz", "w")
write.csv(d, out, row.names = FALSE)
close(out)
d$id <- factor(d$id); d$item <- factor(d$item)
m <- glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), data = d, family = binomial, nAGQ = 1)
vc <- as.data.frame(VarCorr(m))
write_json(list(
  data = "VerbAgg", formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
  method = "glmer, binomial (logit), nAGQ = 1 (Laplace)",
  lme4_version = as.character(packageVersion("lme4")), R_version = R.version.string,
  n_obs = nrow(d), logLik = as.numeric(logLik(m)),
  fixed_effects = as.list(fixef(m)), fixed_effects_se = as.list(sqrt(diag(as.matrix(vcov(m))))),
  varcorr = vc
), "benchmarks/data/lme4_verbagg_bernoulli.json", auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null")
