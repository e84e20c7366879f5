fn main() {
    print!("{}", palisade::api::crd::crds_yaml().unwrap());
}
