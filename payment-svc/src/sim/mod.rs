//! provider-sim: plays the bank-card, Alipay and WeChat Pay providers over HTTP.
